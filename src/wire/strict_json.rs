//! Strict reading of metered request bodies.
//!
//! The proxy must read a request body exactly as the provider will, or refuse it. The
//! providers' JSON readers are lenient in ways a plain `serde_json::Value` hides: with a key
//! given twice the last one wins there, while `Value` would silently keep one of them and the
//! estimate could read the other. So a metered body is parsed here, and refused when it is
//! anything but one well-formed JSON document: duplicate keys (at any depth), invalid UTF-8,
//! lone surrogates, numbers out of range, trailing data, nesting past serde_json's limit, or no
//! JSON at all. `NaN` and `Infinity` are not JSON and are refused by the parser itself.
//!
//! The field readers below refuse a billed field whose value has the wrong type, instead of
//! falling back to a default the provider would not use.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

pub use super::BodyError;

/// Parses one JSON document strictly (see the module docs).
pub fn parse(body: &[u8]) -> Result<Value, BodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(BodyError("the request body is empty; a JSON object was expected".into()));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = Strict::deserialize(&mut de).map_err(|e| BodyError(format!("the request body is not valid JSON: {e}")))?;
    de.end()
        .map_err(|e| BodyError(format!("the request body has data after its JSON value: {e}")))?;
    Ok(value.0)
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("a number that is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!("the key {:?} appears twice in one object", Printable(&key))));
            }
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// A client-chosen string shown in a message: at most 64 characters, control characters
/// escaped, so that no raw newline reaches a log line.
pub struct Printable<'a>(pub &'a str);

impl fmt::Debug for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s: String = self.0.chars().take(64).collect();
        if self.0.chars().nth(64).is_some() {
            s.push('…');
        }
        fmt::Debug::fmt(&s, f)
    }
}

/// An optional non-negative integer member: absent or null is `None`; any other type (a
/// string, a negative or fractional number) is refused rather than read as absent.
pub fn opt_u64(obj: &Value, key: &str) -> Result<Option<u64>, BodyError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) => Ok(Some(v)),
            // 2.0 is an integer to the providers' Python and JavaScript readers.
            None => match n.as_f64() {
                Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= 9.0e15 => Ok(Some(f as u64)),
                _ => Err(wrong_type(key, "a non-negative integer")),
            },
        },
        Some(_) => Err(wrong_type(key, "a non-negative integer")),
    }
}

/// An optional string member: absent or null is `None`; any other type is refused.
pub fn opt_str<'a>(obj: &'a Value, key: &str) -> Result<Option<&'a str>, BodyError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(wrong_type(key, "a string")),
    }
}

/// An optional boolean member: absent or null is `None`; any other type is refused.
pub fn opt_bool(obj: &Value, key: &str) -> Result<Option<bool>, BodyError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(wrong_type(key, "true or false")),
    }
}

/// The body must be a JSON object.
pub fn object(v: &Value) -> Result<&Value, BodyError> {
    if v.is_object() {
        Ok(v)
    } else {
        Err(BodyError("the request body must be a JSON object".into()))
    }
}

fn wrong_type(key: &str, expected: &str) -> BodyError {
    BodyError(format!("the member {:?} must be {expected}", Printable(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_json() {
        let v = parse(br#" {"a":[1,2.5,{"b":null}],"c":"\u00e9"} "#).unwrap();
        assert_eq!(v["c"], "é");
    }

    #[test]
    fn refuses_what_a_lenient_reader_would_read_differently() {
        for body in [
            &br#"{"text":"","text":"long"}"#[..],
            br#"{"a":{"x":1,"x":2}}"#,
            br#"[{"k":1,"k":1}]"#,
            br#"{"a":1} {"a":2}"#,
            br#"{"a":1}x"#,
            br#"{"a":NaN}"#,
            br#"{"a":Infinity}"#,
            br#"{"a":1e999}"#,
            b"{\"a\":\"\xff\"}",
            br#"{"a":"\ud800"}"#,
            b"",
            b"   ",
            b"text=hello",
            br#"{"a":1"#,
        ] {
            assert!(parse(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn duplicate_key_message_is_printable() {
        let e = parse(b"{\"a\\nb\":1,\"a\\nb\":2}").unwrap_err();
        assert!(!e.0.contains('\n'), "{}", e.0);
    }

    #[test]
    fn field_readers_refuse_wrong_types() {
        let v: Value = serde_json::json!({"n": 2, "f": 2.0, "neg": -1, "frac": 1.5, "s": "2", "b": true, "z": null});
        assert_eq!(opt_u64(&v, "n"), Ok(Some(2)));
        assert_eq!(opt_u64(&v, "f"), Ok(Some(2)));
        assert_eq!(opt_u64(&v, "z"), Ok(None));
        assert_eq!(opt_u64(&v, "missing"), Ok(None));
        for k in ["neg", "frac", "s", "b"] {
            assert!(opt_u64(&v, k).is_err(), "{k}");
        }
        assert!(opt_str(&v, "n").is_err());
        assert_eq!(opt_bool(&v, "b"), Ok(Some(true)));
        assert!(opt_bool(&v, "s").is_err());
    }
}
