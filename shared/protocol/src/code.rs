//! Numbered wire enums: opcodes and close codes.

/// Declares a fieldless enum whose variants travel as numbers, with `ALL`
/// (every variant, in declaration order), `from_code`, a `Serialize` that
/// writes the number, and `From<Enum>` for the number type.
macro_rules! numbered {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $repr:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr($repr)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value numbered `code`, if any.
            pub fn from_code(code: u64) -> Option<$name> {
                match code {
                    $( $value => Some($name::$variant), )+
                    _ => None,
                }
            }
        }

        impl From<$name> for $repr {
            fn from(value: $name) -> $repr {
                value as $repr
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_u64(*self as u64)
            }
        }
    };
}

pub(crate) use numbered;
