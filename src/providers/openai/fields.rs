//! The billed fields of a request that comes as JSON or as a multipart form (images, audio,
//! video), read the same strict way from either.

use serde_json::Value;

use super::super::{Call, Refusal, RequestBody, RequestInfo};
use crate::wire::multipart::Form;
use crate::wire::strict_json::{opt_bool, opt_str, opt_u64};

pub(super) enum Fields<'a> {
    Json(&'a Value),
    Form(Form<'a>),
}

fn invalid(msg: impl Into<String>) -> Refusal {
    Refusal::InvalidBody(msg.into())
}

impl<'a> Fields<'a> {
    /// The body as the call was classified: strictly parsed JSON, or a multipart form.
    pub fn read(call: &Call, req: &RequestInfo<'_>, body: &RequestBody<'a>) -> Result<Fields<'a>, Refusal> {
        if call.json_body {
            return Ok(Fields::Json(body.object()?));
        }
        Ok(Fields::Form(Form::read(req.headers, body.bytes)?))
    }

    pub fn str(&self, key: &str) -> Result<Option<&str>, Refusal> {
        match self {
            Fields::Json(v) => Ok(opt_str(v, key)?),
            Fields::Form(f) => Ok(f.text(key)?),
        }
    }

    /// A non-negative integer: a JSON number, or form text of decimal digits.
    pub fn u64(&self, key: &str) -> Result<Option<u64>, Refusal> {
        match self {
            Fields::Json(v) => Ok(opt_u64(v, key)?),
            Fields::Form(_) => self.str(key)?.map(|s| digits(key, s)).transpose(),
        }
    }

    /// An integer that the API types as a string of digits (`"8"`), also taken as a number.
    pub fn digits(&self, key: &str) -> Result<Option<u64>, Refusal> {
        match self {
            Fields::Json(v) if v.get(key).is_some_and(Value::is_number) => self.u64(key),
            _ => self.str(key)?.map(|s| digits(key, s)).transpose(),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, Refusal> {
        match self {
            Fields::Json(v) => Ok(opt_bool(v, key)?),
            Fields::Form(_) => match self.str(key)? {
                None => Ok(None),
                Some("true") => Ok(Some(true)),
                Some("false") => Ok(Some(false)),
                Some(_) => Err(invalid(format!("the form field {key:?} must be true or false"))),
            },
        }
    }

    /// Files uploaded under any of `names` (form parts, or entries of JSON arrays), with
    /// their total size in bytes (0 for JSON references to stored files).
    pub fn files(&self, names: &[&str]) -> (u64, u64) {
        match self {
            Fields::Json(v) => {
                let count = names
                    .iter()
                    .filter_map(|n| v.get(*n))
                    .map(|f| match f {
                        Value::Array(a) => a.len() as u64,
                        Value::Null => 0,
                        _ => 1,
                    })
                    .sum();
                (count, 0)
            }
            Fields::Form(f) => f
                .parts
                .iter()
                .filter(|p| names.contains(&p.name.as_str()))
                .fold((0, 0), |(n, bytes), p| (n + 1, bytes + p.body.len() as u64)),
        }
    }

    /// Bytes of the text fields under `names` (prompts).
    pub fn text_bytes(&self, names: &[&str]) -> Result<usize, Refusal> {
        names.iter().try_fold(0, |sum, n| Ok(sum + self.str(n)?.map_or(0, str::len)))
    }
}

fn digits(key: &str, s: &str) -> Result<u64, Refusal> {
    if s.is_empty() || s.len() > 15 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(format!("the field {key:?} must be a non-negative integer")));
    }
    s.parse().map_err(|_| invalid(format!("the field {key:?} must be a non-negative integer")))
}

/// The model a media request names: required, since the upstream defaults are retired models
/// or change without notice.
pub(super) fn model(f: &Fields<'_>, call: &mut Call, default: Option<&str>) -> Result<String, Refusal> {
    let model = f.str("model")?.filter(|m| !m.is_empty()).or(default);
    let model = model.ok_or_else(|| invalid("the member \"model\" is required: the proxy prices by model"))?;
    call.model = Some(model.to_string());
    Ok(model.to_string())
}
