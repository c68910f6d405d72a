//! ElevenLabs: text to speech (every variant), dialogue, sound effects, speech to text.
//!
//! TTS is billed by the characters of the request's `text` times the model's price, so the
//! estimate is exact and is what is charged when the upstream succeeds. The response body is
//! opaque audio and is not read; an upstream error costs nothing.

use http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;

use super::json_scan::JsonScanner;
use super::{BodyEnd, Call, Estimate, FixedCost, Provider, Refusal, RequestBody, RequestInfo, Settled, Source, Usage, UsageExtractor};
use crate::config::{ProviderKind, ReserveConfig};

/// The model ElevenLabs uses when the request names none (its documented default).
pub const DEFAULT_TTS_MODEL: &str = "eleven_multilingual_v2";
/// The model used for sound effects when the request names none.
pub const DEFAULT_SOUND_MODEL: &str = "eleven_text_to_sound_v2";
/// The model used for speech to text when the form names none.
pub const DEFAULT_STT_MODEL: &str = "scribe_v1";
/// Bytes of uploaded audio per second assumed for the speech-to-text reservation
/// (128 kbit/s, the common MP3 rate).
const STT_BYTES_PER_SECOND: u64 = 16_000;

pub struct ElevenLabs;

#[derive(Deserialize, Default)]
struct TtsBody {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    model_id: Option<String>,
    #[serde(default)]
    inputs: Vec<DialogueInput>,
}

#[derive(Deserialize, Default)]
struct DialogueInput {
    #[serde(default)]
    text: String,
}

impl Provider for ElevenLabs {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Elevenlabs
    }

    fn classify(&self, req: &RequestInfo<'_>) -> Call {
        if *req.method != Method::POST {
            return Call::free("other", None);
        }
        let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
        let metered = |endpoint, streaming| Call::metered(endpoint).streaming(streaming);
        match segs.as_slice() {
            ["v1", "text-to-speech", _voice] => metered("tts", false),
            ["v1", "text-to-speech", _voice, "stream"] => metered("tts_stream", true),
            ["v1", "text-to-speech", _voice, "with-timestamps"] => metered("tts_timestamps", false),
            ["v1", "text-to-speech", _voice, "stream", "with-timestamps"] => metered("tts_stream_timestamps", true),
            ["v1", "text-to-dialogue"] => metered("dialogue", false),
            ["v1", "text-to-dialogue", "stream"] => metered("dialogue_stream", true),
            ["v1", "text-to-dialogue", "with-timestamps"] => metered("dialogue_timestamps", false),
            ["v1", "text-to-dialogue", "stream", "with-timestamps"] => metered("dialogue_stream_timestamps", true),
            ["v1", "sound-generation"] => metered("sound_generation", false),
            ["v1", "speech-to-text"] => metered("speech_to_text", false).head_only(),
            _ => Call::free("other", None),
        }
    }

    fn estimate(&self, call: &mut Call, req: &RequestInfo<'_>, body: &RequestBody<'_>, _reserve: &ReserveConfig) -> Result<Estimate, Refusal> {
        if call.endpoint == "speech_to_text" {
            call.model = Some(DEFAULT_STT_MODEL.into());
            let bytes = req
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            return Ok(Estimate {
                usage: Usage {
                    audio_millis: bytes.saturating_mul(1000) / STT_BYTES_PER_SECOND,
                    ..Usage::default()
                },
                ..Estimate::default()
            });
        }
        let parsed = TtsBody::deserialize(body.object()?).map_err(|e| Refusal::InvalidBody(format!("the request body cannot be read: {e}")))?;
        let characters = match call.endpoint {
            e if e.starts_with("dialogue") => parsed.inputs.iter().map(|i| i.text.chars().count() as u64).sum(),
            "sound_generation" => 0,
            _ => parsed.text.as_deref().map_or(0, |t| t.chars().count() as u64),
        };
        let default_model = if call.endpoint == "sound_generation" {
            DEFAULT_SOUND_MODEL
        } else {
            DEFAULT_TTS_MODEL
        };
        call.model = Some(parsed.model_id.filter(|m| !m.is_empty()).unwrap_or_else(|| default_model.to_string()));
        Ok(Estimate {
            usage: Usage {
                characters,
                ..Usage::default()
            },
            ..Estimate::default()
        })
    }

    fn extractor(&self, call: &Call, _status: StatusCode, _headers: &HeaderMap, estimate: &Usage) -> Box<dyn UsageExtractor> {
        if call.endpoint == "speech_to_text" {
            return Box::new(SpeechToText {
                scanner: JsonScanner::new(1, &["audio_duration_secs", "words"], &[]),
                duration_ms: None,
                estimate: estimate.clone(),
            });
        }
        Box::new(FixedCost::new(estimate.clone(), Source::Reported))
    }
}

/// Reads the audio duration out of a transcript: `audio_duration_secs`, else the end of the
/// last word.
struct SpeechToText {
    scanner: JsonScanner,
    duration_ms: Option<u64>,
    estimate: Usage,
}

#[derive(Deserialize)]
struct Word {
    #[serde(default)]
    end: Option<f64>,
}

impl UsageExtractor for SpeechToText {
    fn feed(&mut self, chunk: &[u8]) {
        let duration = &mut self.duration_ms;
        self.scanner.feed(chunk, &mut |record| {
            let secs = record
                .get("audio_duration_secs")
                .and_then(|v| serde_json::from_slice::<f64>(v).ok())
                .or_else(|| {
                    let words: Vec<Word> = serde_json::from_slice(record.get("words")?).ok()?;
                    words.iter().rev().find_map(|w| w.end)
                });
            if let Some(s) = secs.filter(|s| s.is_finite() && *s >= 0.0) {
                *duration = Some((s * 1000.0).round() as u64);
            }
        });
    }

    fn finish(&mut self, end: BodyEnd) -> Settled {
        match self.duration_ms {
            Some(ms) => Settled {
                usage: Usage {
                    audio_millis: ms,
                    ..Usage::default()
                },
                source: Source::Reported,
                response_model: None,
                anomaly: None,
            },
            None => Settled::estimated(
                &self.estimate,
                match end {
                    BodyEnd::Cut => super::Anomaly::Cut,
                    BodyEnd::Complete if self.scanner.malformed() => super::Anomaly::Malformed,
                    BodyEnd::Complete => super::Anomaly::Missing,
                },
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info<'a>(path: &'a str, headers: &'a HeaderMap) -> RequestInfo<'a> {
        RequestInfo {
            method: &Method::POST,
            path,
            query: None,
            headers,
        }
    }

    #[test]
    fn every_tts_variant_is_metered() {
        let h = HeaderMap::new();
        for (path, streaming) in [
            ("/v1/text-to-speech/voice1", false),
            ("/v1/text-to-speech/voice1/stream", true),
            ("/v1/text-to-speech/voice1/with-timestamps", false),
            ("/v1/text-to-speech/voice1/stream/with-timestamps", true),
        ] {
            let call = ElevenLabs.classify(&info(path, &h));
            assert!(call.metered && call.needs_body, "{path}");
            assert_eq!(call.streaming, streaming, "{path}");
        }
        assert!(!ElevenLabs.classify(&info("/v1/voices", &h)).metered);
    }

    #[test]
    fn characters_are_unicode_scalars_and_model_defaults() {
        let h = HeaderMap::new();
        let mut call = ElevenLabs.classify(&info("/v1/text-to-speech/v", &h));
        let est = super::super::estimate_call(
            &ElevenLabs,
            &mut call,
            &info("/v1/text-to-speech/v", &h),
            "{\"text\":\"héllo ✓\"}".as_bytes(),
            &ReserveConfig::default(),
        )
        .unwrap();
        assert_eq!(est.usage.characters, 7);
        assert_eq!(call.model.as_deref(), Some(DEFAULT_TTS_MODEL));
        let est = super::super::estimate_call(
            &ElevenLabs,
            &mut call,
            &info("/v1/text-to-speech/v", &h),
            br#"{"text":"ab","model_id":"eleven_flash_v2_5"}"#,
            &ReserveConfig::default(),
        )
        .unwrap();
        assert_eq!(est.usage.characters, 2);
        assert_eq!(call.model.as_deref(), Some("eleven_flash_v2_5"));
    }

    #[test]
    fn speech_to_text_duration() {
        let h = HeaderMap::new();
        let call = ElevenLabs.classify(&info("/v1/speech-to-text", &h));
        let mut x = ElevenLabs.extractor(&call, StatusCode::OK, &h, &Usage::default());
        x.feed(br#"{"language_code":"en","text":"hi","words":[{"end":3.5}],"audio_duration_secs":12.48}"#);
        assert_eq!(x.finish(BodyEnd::Complete).usage.audio_millis, 12_480);
        let mut x = ElevenLabs.extractor(&call, StatusCode::OK, &h, &Usage::default());
        x.feed(br#"{"text":"hi","words":[{"end":1.0},{"end":3.5}]}"#);
        assert_eq!(x.finish(BodyEnd::Complete).usage.audio_millis, 3_500);
    }
}
