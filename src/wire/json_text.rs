//! Reading JSON strings of a streamed event without keeping them: the decoded length of a
//! text delta ([`TextLen`]), and a short name borrowed from the event when it has no escapes
//! ([`Name`]). A stream has one event per token or so; allocating each string of each
//! event was most of what reading them cost.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// The decoded length in bytes of a JSON string (escapes count as what they stand for).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TextLen(pub usize);

impl<'de> Deserialize<'de> for TextLen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Len;
        impl Visitor<'_> for Len {
            type Value = TextLen;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<TextLen, E> {
                Ok(TextLen(s.len()))
            }
        }
        d.deserialize_str(Len)
    }
}

/// A JSON string, borrowed from the input unless it had to be unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Name<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Text<'a> {
            type Value = Name<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Name<'a>, E> {
                Ok(Name(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Name<'a>, E> {
                Ok(Name(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(Text(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_of_the_decoded_text_and_names_borrow_when_they_can() {
        let len = |j: &str| serde_json::from_str::<TextLen>(j).unwrap().0;
        assert_eq!(len(r#""low tide""#), 8);
        assert_eq!(len(r#""a\nb\u00e9""#), 5, "\\n is one byte, é two");
        assert!(serde_json::from_str::<TextLen>("3").is_err());
        let name: Name = serde_json::from_str(r#""gpt-4o-mini""#).unwrap();
        assert!(matches!(name.0, Cow::Borrowed("gpt-4o-mini")));
        let name: Name = serde_json::from_str(r#""gpt\/4""#).unwrap();
        assert_eq!(name.0, "gpt/4");
        let none: Option<Name> = serde_json::from_str("null").unwrap();
        assert!(none.is_none());
    }
}
