//! Discord ids.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A Discord snowflake: a 64-bit id, on the wire a string of decimal digits.
///
/// Voice gateway clients send it as a string or, some of them, as a JSON
/// integer: both decode. LVSP's snowflakes are strings only (seeds/001), so
/// its messages decode a number there as an error. It always encodes as a
/// string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Snowflake(pub u64);

/// A string that is no snowflake: not 1 to 20 ASCII digits, or above
/// `u64::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a snowflake")]
pub struct ParseSnowflakeError;

impl FromStr for Snowflake {
    type Err = ParseSnowflakeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // `u64::from_str` also takes a leading '+': a snowflake is digits.
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseSnowflakeError);
        }
        s.parse().map(Snowflake).map_err(|_| ParseSnowflakeError)
    }
}

impl fmt::Display for Snowflake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u64> for Snowflake {
    fn from(id: u64) -> Snowflake {
        Snowflake(id)
    }
}

impl Serialize for Snowflake {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Snowflake {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Snowflake, D::Error> {
        deserializer.deserialize_any(SnowflakeVisitor { integers: true })
    }
}

struct SnowflakeVisitor {
    /// Whether a JSON integer is accepted as well as a string.
    integers: bool,
}

impl Visitor<'_> for SnowflakeVisitor {
    type Value = Snowflake;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.integers {
            "a snowflake (a string of digits or an integer)"
        } else {
            "a snowflake (a string of digits)"
        })
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Snowflake, E> {
        // The error names no part of the input: nothing a peer sent is
        // ever repeated back.
        v.parse()
            .map_err(|_| E::invalid_value(Unexpected::Other("text"), &self))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Snowflake, E> {
        if self.integers {
            Ok(Snowflake(v))
        } else {
            Err(E::invalid_type(Unexpected::Other("number"), &self))
        }
    }
}

/// `deserialize_with` for a snowflake that must be a string (LVSP).
pub(crate) fn string_only<'de, D: Deserializer<'de>>(d: D) -> Result<Snowflake, D::Error> {
    d.deserialize_str(SnowflakeVisitor { integers: false })
}

/// `deserialize_with` for an optional snowflake that must be a string when
/// present; null (and, with `#[serde(default)]`, absent) is `None`.
pub(crate) fn string_only_opt<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Snowflake>, D::Error> {
    struct StringOnly(Snowflake);
    impl<'de> Deserialize<'de> for StringOnly {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            string_only(d).map(StringOnly)
        }
    }
    Ok(Option::<StringOnly>::deserialize(d)?.map(|s| s.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Lvsp {
        #[serde(deserialize_with = "string_only")]
        id: Snowflake,
        #[serde(default, deserialize_with = "string_only_opt")]
        guild: Option<Snowflake>,
    }

    #[test]
    fn strings_and_integers() {
        let parse = |s: &str| serde_json::from_str::<Snowflake>(s).ok();
        assert_eq!(
            parse(r#""41771983423143936""#),
            Some(Snowflake(41771983423143936))
        );
        assert_eq!(
            parse("41771983423143936"),
            Some(Snowflake(41771983423143936))
        );
        assert_eq!(
            parse(r#""18446744073709551615""#),
            Some(Snowflake(u64::MAX))
        );
        assert_eq!(parse(r#""0""#), Some(Snowflake(0)));
        for bad in [
            r#""""#,
            r#""x1""#,
            r#""+5""#,
            r#""-5""#,
            r#"" 5""#,
            r#""18446744073709551616""#,
            r#""000000000000000000001""#,
            "-5",
            "1.5",
            "18446744073709551616",
            "null",
            "[1]",
            "{}",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_eq!(serde_json::to_string(&Snowflake(7)).unwrap(), r#""7""#);
        assert_eq!("0100".parse::<Snowflake>(), Ok(Snowflake(100)));
    }

    #[test]
    fn string_only_refuses_numbers() {
        let lvsp = |s: &str| serde_json::from_str::<Lvsp>(s).map(|l| (l.id, l.guild));
        assert_eq!(lvsp(r#"{"id":"1"}"#).ok(), Some((Snowflake(1), None)));
        assert_eq!(
            lvsp(r#"{"id":"1","guild":null}"#).ok(),
            Some((Snowflake(1), None))
        );
        assert_eq!(
            lvsp(r#"{"id":"1","guild":"2"}"#).ok(),
            Some((Snowflake(1), Some(Snowflake(2))))
        );
        for bad in [
            r#"{"id":1}"#,
            r#"{"id":"1","guild":2}"#,
            r#"{"id":"x"}"#,
            r#"{"guild":"2"}"#,
        ] {
            assert!(lvsp(bad).is_err(), "{bad}");
        }
        // The error never repeats what was sent.
        let e = lvsp(r#"{"id":"EVIL"}"#).unwrap_err().to_string();
        assert!(!e.contains("EVIL"), "{e}");
    }
}
