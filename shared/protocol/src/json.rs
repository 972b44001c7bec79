//! What both protocols share on the wire: JSON text frames `{op, d}`,
//! decoded in two steps (the envelope, then `d` once the op is known).

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

/// Why a frame is not a well-formed message. Both protocols close with
/// their decode-error code (4002) for any of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.reason())]
pub enum Malformed {
    /// Not JSON, or not a JSON object.
    NotJson,
    /// No `op`, or an `op` that is not a non-negative integer.
    NoOp,
    /// `d` lacks a field its op requires, or has one of the wrong type.
    Data,
}

impl Malformed {
    /// The fixed text of a close frame for this error.
    pub fn reason(self) -> &'static str {
        match self {
            Malformed::NotJson => "invalid json",
            Malformed::NoOp => "missing integer op",
            Malformed::Data => "missing or wrong-typed field",
        }
    }
}

/// Whether `text` is a JSON object (or nothing JSON could read). serde
/// would fill a struct from an array too; messages are objects.
fn is_object(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

/// A frame's `op` and raw `d`, before `d` is decoded: both protocols
/// frame JSON messages as `{op, d}`. Parse it, check the op against the
/// connection's state, then decode `d` with the protocol's
/// `ClientMessage::from_envelope`.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    op: u64,
    #[serde(borrow, default)]
    d: Option<&'a RawValue>,
}

impl<'a> Envelope<'a> {
    /// Parses a text frame: a JSON object with an integer `op`.
    pub fn parse(text: &'a str) -> Result<Envelope<'a>, Malformed> {
        envelope(text)
    }

    /// The op, whatever it is.
    pub fn op(&self) -> u64 {
        self.op
    }

    /// The raw `d` (None when absent or null).
    pub(crate) fn d(&self) -> Option<&'a RawValue> {
        self.d
    }
}

/// Parses a frame into an envelope type `E` (an `op`, a raw `d`, maybe a
/// sequence number), telling text that is no JSON object from an object
/// without a usable `op`.
pub(crate) fn envelope<'a, E: Deserialize<'a>>(text: &'a str) -> Result<E, Malformed> {
    if !is_object(text) {
        return Err(Malformed::NotJson);
    }
    serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Malformed::NoOp,
        _ => Malformed::NotJson,
    })
}

/// The raw text of `d`: a missing `d` reads as `null`.
fn raw(d: Option<&RawValue>) -> &str {
    d.map_or("null", RawValue::get)
}

/// `d` decoded as any `T` (a number, null, an object).
pub(crate) fn data<'a, T: Deserialize<'a>>(d: Option<&'a RawValue>) -> Result<T, Malformed> {
    serde_json::from_str(raw(d)).map_err(|_| Malformed::Data)
}

/// `d` decoded as a message struct `T`: it must be a JSON object.
pub(crate) fn object<'a, T: Deserialize<'a>>(d: Option<&'a RawValue>) -> Result<T, Malformed> {
    if !is_object(raw(d)) {
        return Err(Malformed::Data);
    }
    data(d)
}

/// Whether `d` is a JSON object.
pub(crate) fn is_object_data(d: Option<&RawValue>) -> bool {
    is_object(raw(d))
}

/// The text frame `{"op": op, "d": d}`, plus a sequence number under its
/// protocol's key when given (`s` on LVSP INFOs, `seq` at gateway v8).
pub(crate) fn encode<O: Serialize, D: Serialize>(
    op: O,
    d: D,
    number: Option<(&'static str, u64)>,
) -> String {
    struct Frame<O, D> {
        op: O,
        d: D,
        number: Option<(&'static str, u64)>,
    }
    impl<O: Serialize, D: Serialize> Serialize for Frame<O, D> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut map = serializer.serialize_map(None)?;
            map.serialize_entry("op", &self.op)?;
            map.serialize_entry("d", &self.d)?;
            if let Some((key, n)) = self.number {
                map.serialize_entry(key, &n)?;
            }
            map.end()
        }
    }
    serde_json::to_string(&Frame { op, d, number })
        .unwrap_or_else(|_| unreachable!("messages are plain data"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_and_data() {
        let e = Envelope::parse(r#" {"op":3,"d":{"t":1},"x":[]}"#).unwrap();
        assert_eq!(e.op(), 3);
        assert_eq!(raw(e.d()), r#"{"t":1}"#);
        let e = Envelope::parse(r#"{"op":9}"#).unwrap();
        assert_eq!(raw(e.d()), "null");
        let e = Envelope::parse(r#"{"op":9,"d":null}"#).unwrap();
        assert!(e.d().is_none());
        for (text, err) in [
            ("nope", Malformed::NotJson),
            ("[1,2]", Malformed::NotJson),
            ("{", Malformed::NotJson),
            (r#"{"op":1} x"#, Malformed::NotJson),
            (r#"{"d":1}"#, Malformed::NoOp),
            (r#"{"op":"1"}"#, Malformed::NoOp),
            (r#"{"op":-1}"#, Malformed::NoOp),
            (r#"{"op":1.5}"#, Malformed::NoOp),
        ] {
            assert_eq!(Envelope::parse(text).unwrap_err(), err, "{text}");
        }
        #[derive(Debug, Deserialize)]
        struct S {
            #[allow(dead_code)]
            a: u8,
        }
        let d = |s: &'static str| Some(serde_json::from_str::<&RawValue>(s).unwrap());
        assert!(object::<S>(d(r#"{"a":1}"#)).is_ok());
        assert_eq!(object::<S>(d("[1]")).unwrap_err(), Malformed::Data);
        assert_eq!(object::<S>(None).unwrap_err(), Malformed::Data);
        assert_eq!(data::<u8>(d("7")), Ok(7));
        assert_eq!(data::<Option<u8>>(None), Ok(None));
    }
}
