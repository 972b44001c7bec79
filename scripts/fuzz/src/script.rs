//! The input format of the protocol targets: lines, each either a text
//! frame (with `$0`..`$9` replaced by the secrets the harness knows: tokens,
//! session ids) or, after `!`, a directive: one letter and an optional
//! decimal number (`!t1500`: 1.5 s pass). Seeds and dictionaries stay
//! readable, and libFuzzer still mutates bytes freely.

use std::borrow::Cow;

/// One line of a script.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A websocket text frame.
    Text(Cow<'a, str>),
    /// `!` + letter + number (0 when absent, saturating).
    Directive(u8, u64),
}

/// The lines of `data`, split on `\n`; empty lines are skipped (so seed
/// files may end with a newline).
pub fn lines(data: &[u8]) -> impl Iterator<Item = Line<'_>> {
    data.split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| match line {
            [b'!', letter, digits @ ..] => Line::Directive(*letter, number(digits)),
            text => Line::Text(String::from_utf8_lossy(text)),
        })
}

fn number(digits: &[u8]) -> u64 {
    digits
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |n, d| {
            n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        })
}

/// `text` with each `$i` replaced by `vars[i]` (when there is one).
pub fn fill<'a>(text: &'a str, vars: &[String]) -> Cow<'a, str> {
    if !text.contains('$') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 64);
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        match after
            .bytes()
            .next()
            .map(|b| usize::from(b.wrapping_sub(b'0')))
        {
            Some(i) if i < vars.len() => {
                out.push_str(&vars[i]);
                rest = &after[1..];
            }
            _ => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Every text output is a JSON object with an integer `op`: the `op`.
pub fn op_of(text: &str) -> (u64, serde_json::Value) {
    let v: serde_json::Value = serde_json::from_str(text).expect("the server sends JSON");
    let op = v.get("op").and_then(serde_json::Value::as_u64);
    (op.unwrap_or_else(|| panic!("no integer op in {text}")), v)
}

/// A snowflake literal of the harness.
pub(crate) fn sf(id: &str) -> protocol::Snowflake {
    id.parse().expect("a snowflake literal")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_placeholders() {
        let got: Vec<_> = lines(b"{\"op\":1}\n!t1500\n\n!x\n!\n").collect();
        assert_eq!(
            got,
            vec![
                Line::Text(Cow::Borrowed("{\"op\":1}")),
                Line::Directive(b't', 1500),
                Line::Directive(b'x', 0),
                Line::Text(Cow::Borrowed("!")),
            ]
        );
        let vars = ["tok".to_owned(), "sid".to_owned()];
        assert_eq!(fill("a $0 b $1 $2 $", &vars), "a tok b sid $2 $");
        assert_eq!(fill("$$0", &vars), "$tok");
        assert_eq!(fill("é$1é", &vars), "ésidé");
    }
}
