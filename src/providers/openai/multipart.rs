//! A bounded reader of `multipart/form-data` request bodies (RFC 7578), for the uploads whose
//! price depends on a few form fields (images, audio, video).
//!
//! The whole body is already buffered; parts are borrowed from it. Only what pricing needs is
//! read: each part's name, file name and bytes. A body the upstream could read differently is
//! refused: no boundary, a part without a name, a header block past its bound, a body that
//! does not end with the closing delimiter, or more parts than any real upload has.

/// Most parts in one form (the largest real form, an edit with 16 images, has about 30).
const MAX_PARTS: usize = 256;
/// Longest header block of one part.
const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Longest boundary (RFC 2046 §5.1.1).
const MAX_BOUNDARY: usize = 70;

/// One part of a form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part<'a> {
    pub name: String,
    /// Set for file parts.
    pub filename: Option<String>,
    pub body: &'a [u8],
}

/// A parsed form.
#[derive(Debug, Clone, Default)]
pub struct Form<'a> {
    pub parts: Vec<Part<'a>>,
}

impl<'a> Form<'a> {
    /// The parts with a name.
    pub fn named<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s Part<'a>> + 's {
        self.parts.iter().filter(move |p| p.name == name)
    }

    /// The text of a field given at most once: `None` when absent; refused when given twice
    /// (the upstream's choice between two values is unknown) or when not UTF-8.
    pub fn text(&self, name: &str) -> Result<Option<&'a str>, String> {
        let mut found = self.named(name);
        let Some(part) = found.next() else { return Ok(None) };
        if found.next().is_some() {
            return Err(format!("the form field {name:?} is given more than once"));
        }
        std::str::from_utf8(part.body)
            .map(Some)
            .map_err(|_| format!("the form field {name:?} is not UTF-8 text"))
    }
}

/// The boundary of a `multipart/form-data` content type, or None when the type is another.
pub fn boundary(content_type: &str) -> Option<Result<String, String>> {
    let mut params = content_type.split(';');
    let essence = params.next()?.trim();
    if !essence.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    let value = params
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_string());
    Some(match value {
        Some(b) if !b.is_empty() && b.len() <= MAX_BOUNDARY => Ok(b),
        _ => Err("the multipart content type has no valid boundary".into()),
    })
}

/// Splits a buffered form into its parts.
pub fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Form<'a>, String> {
    let delimiter = [b"--", boundary.as_bytes()].concat();
    // The first delimiter may follow a preamble; the others follow a CRLF.
    let start = if body.starts_with(&delimiter) {
        0
    } else {
        find(body, &[b"\r\n", delimiter.as_slice()].concat()).ok_or("the multipart body has no boundary")? + 2
    };
    let separator = [b"\r\n", delimiter.as_slice()].concat();
    let mut rest = &body[start + delimiter.len()..];
    let mut form = Form::default();
    loop {
        if rest.starts_with(b"--") {
            return Ok(form);
        }
        rest = after_line_end(rest).ok_or("a multipart boundary line is malformed")?;
        if form.parts.len() == MAX_PARTS {
            return Err(format!("the multipart body has more than {MAX_PARTS} parts"));
        }
        let head_end = find(&rest[..rest.len().min(MAX_HEADER_BYTES + 4)], b"\r\n\r\n").ok_or("a multipart part's headers are malformed or too long")?;
        let (name, filename) = disposition(&rest[..head_end])?;
        let content = &rest[head_end + 4..];
        let end = find(content, &separator).ok_or("the multipart body ends before its closing boundary")?;
        form.parts.push(Part {
            name,
            filename,
            body: &content[..end],
        });
        rest = &content[end + separator.len()..];
    }
}

/// The bytes after a boundary line's end: optional transport padding, then CRLF.
fn after_line_end(s: &[u8]) -> Option<&[u8]> {
    let pad = s.iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
    s[pad..].strip_prefix(b"\r\n")
}

/// `name` and `filename` from a part's `Content-Disposition: form-data` header.
fn disposition(head: &[u8]) -> Result<(String, Option<String>), String> {
    let head = std::str::from_utf8(head).map_err(|_| "a multipart part's headers are not UTF-8")?;
    let value = head
        .split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-disposition"))
        .map(|(_, v)| v.trim())
        .ok_or("a multipart part has no Content-Disposition")?;
    let (kind, params) = value.split_once(';').unwrap_or((value, ""));
    if !kind.trim().eq_ignore_ascii_case("form-data") {
        return Err("a multipart part is not form-data".into());
    }
    let params = parameters(params)?;
    let get = |key: &str| params.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.clone());
    let name = get("name").filter(|n| !n.is_empty()).ok_or("a multipart part has no name")?;
    Ok((name, get("filename")))
}

/// `; key=value` parameters, values plain or quoted (with backslash escapes).
fn parameters(mut s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches([' ', '\t', ';']);
        if s.is_empty() {
            return Ok(out);
        }
        let (key, rest) = s.split_once('=').ok_or("a Content-Disposition parameter has no value")?;
        let (value, rest) = match rest.strip_prefix('"') {
            Some(quoted) => unquote(quoted)?,
            None => {
                let end = rest.find(';').unwrap_or(rest.len());
                (rest[..end].trim().to_string(), &rest[end..])
            }
        };
        out.push((key.trim().to_string(), value));
        s = rest;
    }
}

/// A quoted string's value and what follows its closing quote.
fn unquote(s: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &s[i + 1..])),
            '\\' => value.push(chars.next().ok_or("a quoted parameter ends in a backslash")?.1),
            c => value.push(c),
        }
    }
    Err("a quoted parameter is not closed".into())
}

/// The first position of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, tail) = needle.split_first()?;
    let mut from = 0;
    while let Some(i) = haystack[from..].iter().position(|&b| b == first) {
        let at = from + i;
        if haystack.len() - at < needle.len() {
            return None;
        }
        if &haystack[at + 1..at + needle.len()] == tail {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A form as an HTTP client writes it: `(name, filename, bytes)` per part.
    pub(crate) fn form(boundary: &str, parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, filename, body) in parts {
            out.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes());
            if let Some(f) = filename {
                out.extend_from_slice(format!("; filename=\"{f}\"\r\nContent-Type: application/octet-stream").as_bytes());
            }
            out.extend_from_slice(b"\r\n\r\n");
            out.extend_from_slice(body);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        out
    }

    #[test]
    fn reads_fields_and_files() {
        let audio: &[u8] = b"ID3\x00\r\n--not-the-boundary\r\n\x00\xff";
        let body = form("b0und", &[("model", None, b"whisper-1"), ("file", Some("a.mp3"), audio), ("n", None, b"2")]);
        let f = parse(&body, "b0und").unwrap();
        assert_eq!(f.parts.len(), 3);
        assert_eq!(f.text("model"), Ok(Some("whisper-1")));
        assert_eq!(f.text("missing"), Ok(None));
        let file = f.named("file").next().unwrap();
        assert_eq!((file.filename.as_deref(), file.body), (Some("a.mp3"), audio));
    }

    #[test]
    fn preamble_padding_quoting_and_header_case() {
        let body = b"preamble\r\n--xy \t\r\ncontent-disposition: FORM-DATA; name=\"a\\\"b\"; filename=x.png\r\n\r\nv\r\n--xy--";
        let f = parse(body, "xy").unwrap();
        assert_eq!(f.parts[0].name, "a\"b");
        assert_eq!(f.parts[0].filename.as_deref(), Some("x.png"));
        assert_eq!(f.parts[0].body, b"v");
    }

    #[test]
    fn refuses_what_cannot_be_read_safely() {
        let twice = form("b", &[("n", None, b"1"), ("n", None, b"9")]);
        assert!(parse(&twice, "b").unwrap().text("n").is_err());
        let unclosed = b"--b\r\nContent-Disposition: form-data; name=\"n\"\r\n\r\n2\r\n";
        let no_name = b"--b\r\nContent-Disposition: form-data\r\n\r\n2\r\n--b--";
        let not_form = b"--b\r\nContent-Disposition: attachment; name=\"n\"\r\n\r\n2\r\n--b--";
        let no_boundary = b"just bytes";
        for body in [&unclosed[..], no_name, not_form, no_boundary] {
            assert!(parse(body, "b").is_err(), "{}", String::from_utf8_lossy(body));
        }
        let many = form("b", &vec![("x", None, &b""[..]); MAX_PARTS + 1]);
        assert!(parse(&many, "b").is_err());
    }

    #[test]
    fn boundary_from_content_type() {
        assert_eq!(boundary("multipart/form-data; boundary=abc"), Some(Ok("abc".into())));
        assert_eq!(boundary("Multipart/Form-Data; charset=x; boundary=\"a b\""), Some(Ok("a b".into())));
        assert_eq!(boundary("application/json"), None);
        assert!(matches!(boundary("multipart/form-data"), Some(Err(_))));
    }
}
