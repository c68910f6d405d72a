//! The text fields of a `multipart/form-data` upload (the audio endpoints take one).
//!
//! Only what the estimate needs is read: the names and values of the fields that are not
//! files, and how many files there are. A body that is not a well-formed form is refused,
//! and so is a text field given twice, which the provider could read either way.

use http::HeaderMap;

use crate::providers::strict_json::Printable;
use crate::providers::Refusal;

#[derive(Debug)]
pub struct Form<'a> {
    fields: Vec<(String, &'a [u8])>,
    pub files: usize,
}

fn invalid(msg: &str) -> Refusal {
    Refusal::InvalidBody(format!("the request body is not a readable multipart form: {msg}"))
}

/// The `boundary` parameter of a `multipart/form-data` content type.
fn boundary(headers: &HeaderMap) -> Result<String, Refusal> {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| invalid("it has no content type"))?;
    let mut params = ct.split(';').map(str::trim);
    if !params.next().is_some_and(|t| t.eq_ignore_ascii_case("multipart/form-data")) {
        return Err(invalid("the content type is not multipart/form-data"));
    }
    params
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .filter(|b| !b.is_empty() && b.len() <= 70)
        .ok_or_else(|| invalid("the content type has no boundary"))
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

/// A `Content-Disposition` parameter's value (`name`, `filename`).
fn disposition_param<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    header.split(';').skip(1).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case(key).then(|| v.trim().trim_matches('"'))
    })
}

impl<'a> Form<'a> {
    pub fn parse(headers: &HeaderMap, body: &'a [u8]) -> Result<Form<'a>, Refusal> {
        let delimiter = format!("--{}", boundary(headers)?).into_bytes();
        let mut at = find(body, &delimiter, 0).ok_or_else(|| invalid("the boundary never occurs"))? + delimiter.len();
        let mut form = Form { fields: Vec::new(), files: 0 };
        loop {
            if body[at..].starts_with(b"--") {
                return Ok(form);
            }
            let part_start = at + 2;
            if body.get(at..part_start) != Some(b"\r\n".as_slice()) {
                return Err(invalid("a boundary is not followed by a line break"));
            }
            let mut next = delimiter.clone();
            next.splice(0..0, *b"\r\n");
            let part_end = find(body, &next, part_start).ok_or_else(|| invalid("the last part is not closed"))?;
            form.part(&body[part_start..part_end])?;
            at = part_end + next.len();
        }
    }

    fn part(&mut self, part: &'a [u8]) -> Result<(), Refusal> {
        let split = find(part, b"\r\n\r\n", 0).ok_or_else(|| invalid("a part has no header end"))?;
        let head = std::str::from_utf8(&part[..split]).map_err(|_| invalid("a part's headers are not UTF-8"))?;
        let disposition = head
            .split("\r\n")
            .find_map(|line| {
                let (k, v) = line.split_once(':')?;
                k.trim().eq_ignore_ascii_case("content-disposition").then_some(v)
            })
            .ok_or_else(|| invalid("a part has no Content-Disposition"))?;
        let name = disposition_param(disposition, "name").ok_or_else(|| invalid("a part has no name"))?;
        if disposition_param(disposition, "filename").is_some() {
            self.files += 1;
            return Ok(());
        }
        if self.fields.iter().any(|(n, _)| n == name) {
            return Err(Refusal::InvalidBody(format!("the form field {:?} appears twice", Printable(name))));
        }
        self.fields.push((name.to_string(), &part[split + 4..]));
        Ok(())
    }

    /// A text field's value (`None` when absent); refused when it is not UTF-8.
    pub fn text(&self, name: &str) -> Result<Option<&'a str>, Refusal> {
        match self.fields.iter().find(|(n, _)| n == name) {
            None => Ok(None),
            Some((_, v)) => std::str::from_utf8(v)
                .map(Some)
                .map_err(|_| Refusal::InvalidBody(format!("the form field {name:?} is not UTF-8 text"))),
        }
    }

    /// A boolean field as the provider's form reader takes it (absent is false); refused when
    /// it is not one of the spellings that reader accepts.
    pub fn flag(&self, name: &str) -> Result<bool, Refusal> {
        let Some(v) = self.text(name)? else {
            return Ok(false);
        };
        match v.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" | "t" | "y" => Ok(true),
            "false" | "0" | "no" | "off" | "f" | "n" => Ok(false),
            _ => Err(Refusal::InvalidBody(format!("the form field {name:?} must be true or false"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(boundary: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}").parse().unwrap());
        h
    }

    #[test]
    fn reads_text_fields_and_counts_files() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"model_id\"\r\n\r\nscribe_v2\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\n\x00\x01--XyZ-not-a-boundary\r\n--XyZ\r\ncontent-disposition: form-data; name=webhook\r\n\r\nTrue\r\n--XyZ--\r\n";
        let f = Form::parse(&headers("XyZ"), body).unwrap();
        assert_eq!(f.text("model_id").unwrap(), Some("scribe_v2"));
        assert_eq!(f.files, 1);
        assert!(f.flag("webhook").unwrap());
        assert!(!f.flag("use_multi_channel").unwrap());
    }

    #[test]
    fn refuses_what_cannot_be_read_one_way() {
        let twice =
            b"--b\r\nContent-Disposition: form-data; name=\"model_id\"\r\n\r\na\r\n--b\r\nContent-Disposition: form-data; name=\"model_id\"\r\n\r\nb\r\n--b--";
        assert!(Form::parse(&headers("b"), twice).is_err());
        let unclosed = b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\na";
        assert!(Form::parse(&headers("b"), unclosed).is_err());
        assert!(Form::parse(&HeaderMap::new(), b"--b--").is_err());
        let mut json = HeaderMap::new();
        json.insert(http::header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert!(Form::parse(&json, b"{}").is_err());
        let bad_flag = b"--b\r\nContent-Disposition: form-data; name=\"webhook\"\r\n\r\nmaybe\r\n--b--";
        assert!(Form::parse(&headers("b"), bad_flag).unwrap().flag("webhook").is_err());
    }
}
