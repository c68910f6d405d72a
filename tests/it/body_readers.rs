//! Property tests of the request-body readers: for generated bodies (duplicate keys at any
//! depth, wrong types, nesting), the fields the proxy bills on are the ones a last-key-wins
//! reader (the providers' own) sees, or the body is refused.

use http::{HeaderMap, Method};
use proptest::prelude::*;
use serde_json::Value;

use spendgate::config::ReserveConfig;
use spendgate::providers::anthropic::Anthropic;
use spendgate::providers::elevenlabs::ElevenLabs;
use spendgate::providers::openai::OpenAi;
use spendgate::providers::{estimate_call, Provider, RequestInfo};
use spendgate::wire::strict_json;

/// A JSON value whose objects may repeat a key.
#[derive(Debug, Clone)]
enum J {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    fn render(&self) -> String {
        match self {
            J::Null => "null".into(),
            J::Bool(b) => b.to_string(),
            J::Int(i) => i.to_string(),
            J::Float(f) => format!("{f:?}"),
            J::Str(s) => serde_json::to_string(s).unwrap(),
            J::Arr(a) => format!("[{}]", a.iter().map(J::render).collect::<Vec<_>>().join(",")),
            J::Obj(o) => format!(
                "{{{}}}",
                o.iter()
                    .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v.render()))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }

    fn has_duplicate_key(&self) -> bool {
        match self {
            J::Arr(a) => a.iter().any(J::has_duplicate_key),
            J::Obj(o) => {
                let mut keys: Vec<&String> = o.iter().map(|(k, _)| k).collect();
                keys.sort();
                keys.windows(2).any(|w| w[0] == w[1]) || o.iter().any(|(_, v)| v.has_duplicate_key())
            }
            _ => false,
        }
    }
}

/// Keys the providers bill on, and some they do not.
const KEYS: &[&str] = &["text", "model", "model_id", "max_tokens", "n", "stream", "messages", "content", "x"];

fn leaf() -> impl Strategy<Value = J> {
    prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        (-5i64..5000).prop_map(J::Int),
        (0.0f64..100.0).prop_map(J::Float),
        "[a-zA-Z0-9 é✓-]{0,24}".prop_map(J::Str),
    ]
}

fn value() -> impl Strategy<Value = J> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(J::Arr),
            prop::collection::vec((prop::sample::select(KEYS).prop_map(str::to_string), inner), 0..6).prop_map(J::Obj),
        ]
    })
}

/// A top-level object, often with billed keys (sometimes twice), whose values are often
/// of the type the provider expects.
fn body() -> impl Strategy<Value = J> {
    let member = prop_oneof![
        3 => "[a-zA-Z0-9 é✓-]{0,24}".prop_map(J::Str),
        2 => (0i64..5000).prop_map(J::Int),
        1 => any::<bool>().prop_map(J::Bool),
        2 => value(),
    ];
    prop::collection::vec((prop::sample::select(KEYS).prop_map(str::to_string), member), 0..6).prop_map(J::Obj)
}

/// A TTS body: always a string `text` somewhere, sometimes a second one.
fn tts_body() -> impl Strategy<Value = J> {
    (body(), "[a-zA-Z0-9 é✓-]{0,24}", any::<bool>()).prop_map(|(j, text, first)| {
        let J::Obj(mut members) = j else { unreachable!("body() makes objects") };
        let member = ("text".to_string(), J::Str(text));
        if first {
            members.insert(0, member);
        } else {
            members.push(member);
        }
        J::Obj(members)
    })
}

fn estimate(provider: &dyn Provider, path: &str, body: &str) -> Result<spendgate::providers::Estimate, spendgate::providers::Refusal> {
    let headers = HeaderMap::new();
    let req = RequestInfo {
        method: &Method::POST,
        path,
        query: None,
        headers: &headers,
    };
    let mut call = provider.classify(&req);
    assert!(call.metered, "{path} is metered");
    estimate_call(provider, &mut call, &req, body.as_bytes(), &ReserveConfig::default()).inspect(|_| {
        // The model the call is priced by is the one the provider reads.
        if let Some(m) = lenient(body).get("model").and_then(Value::as_str) {
            if !m.is_empty() && path.ends_with("completions") {
                assert_eq!(call.model.as_deref(), Some(m), "{body}");
            }
        }
    })
}

/// The providers' reading: the last of duplicate keys wins.
fn lenient(body: &str) -> Value {
    serde_json::from_str(body).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn strict_parse_is_the_lenient_reading_or_a_refusal(j in value()) {
        let text = j.render();
        match strict_json::parse(text.as_bytes()) {
            Ok(v) => {
                prop_assert!(!j.has_duplicate_key(), "a duplicate key was accepted: {text}");
                prop_assert_eq!(v, lenient(&text));
            }
            Err(_) => prop_assert!(j.has_duplicate_key(), "a plain document was refused: {text}"),
        }
    }

    #[test]
    fn tts_characters_are_the_text_the_provider_reads(j in tts_body()) {
        let text = j.render();
        if let Ok(e) = estimate(&ElevenLabs, "/v1/text-to-speech/voice1", &text) {
            prop_assert!(!j.has_duplicate_key(), "{text}");
            let read = lenient(&text);
            let spoken = read["text"].as_str();
            prop_assert!(spoken.is_some(), "billed without a string text: {text}");
            prop_assert_eq!(e.usage.characters, spoken.unwrap().chars().count() as u64, "{}", text);
        }
    }

    #[test]
    fn chat_bills_the_model_and_maximum_the_provider_reads(j in body()) {
        let text = j.render();
        if let Ok(e) = estimate(&OpenAi, "/v1/chat/completions", &text) {
            prop_assert!(!j.has_duplicate_key(), "{text}");
            let read = lenient(&text);
            let cap = ReserveConfig::default().max_output_tokens;
            let n = read["n"]
                .as_u64()
                .or_else(|| read["n"].as_f64().filter(|f| f.fract() == 0.0).map(|f| f as u64))
                .unwrap_or(1)
                .clamp(1, 128);
            if let Some(max) = read["max_tokens"].as_u64() {
                prop_assert_eq!(e.usage.output_tokens, (max * n).min(cap), "{}", text);
            }
        }
    }

    #[test]
    fn messages_reserve_the_maximum_the_provider_reads(j in body()) {
        let text = j.render();
        if let Ok(e) = estimate(&Anthropic, "/v1/messages", &text) {
            prop_assert!(!j.has_duplicate_key(), "{text}");
            let read = lenient(&text);
            let cap = ReserveConfig::default().max_output_tokens;
            match read.get("max_tokens") {
                Some(Value::Number(n)) => prop_assert_eq!(Some(e.usage.output_tokens), n.as_u64().map(|m| m.min(cap)), "{}", text),
                None | Some(Value::Null) => prop_assert_eq!(e.usage.output_tokens, cap),
                Some(other) => prop_assert!(false, "billed with max_tokens = {other}: {text}"),
            }
        }
    }
}
