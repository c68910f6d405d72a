//! Speech to text: `/audio/transcriptions` and `/audio/translations` (multipart uploads).
//!
//! `whisper-1` is billed per minute of audio: the answer's `usage` of type `duration` gives
//! the seconds. The `gpt-4o*-transcribe` models are billed by tokens (`usage` of type
//! `tokens`, also on the `transcript.text.done` event of a stream). The reservation bounds the
//! audio's duration by the upload's size at a bitrate lower than any speech codec's, so the
//! bound is high; answers without usage (`text`, `srt`, `vtt`, and translations) are charged
//! that reservation.

use serde::Deserialize;

use super::super::metered::ToUsage;
use super::super::{estimate_tokens, Call, Estimate, Refusal, Usage};
use super::fields::{self, Fields};
use crate::config::ReserveConfig;

/// Bytes per second of audio assumed for the reservation: 4 kbit/s, below the lowest bitrate
/// of the formats the API takes (Opus speech at 6 kbit/s, MP3 at 8).
const MIN_AUDIO_BYTES_PER_SECOND: u64 = 500;
/// Audio input tokens per second reserved for token-billed models: OpenAI puts
/// `gpt-4o-transcribe` at about $0.006 a minute ($6 per 1M audio tokens: 1000 tokens a minute,
/// about 17 a second); doubled for the bound.
const AUDIO_TOKENS_PER_SECOND: u64 = 34;
/// Transcript tokens per second reserved: fast speech is about 4 words a second, 1.3 tokens a
/// word; doubled.
const TRANSCRIPT_TOKENS_PER_SECOND: u64 = 11;

pub(super) fn estimate(call: &mut Call, f: &Fields<'_>, reserve: &ReserveConfig) -> Result<Estimate, Refusal> {
    let model = fields::model(f, call, None)?;
    let (files, bytes) = f.files(&["file"]);
    if files != 1 {
        return Err(Refusal::InvalidBody("the form must carry exactly one \"file\" of audio".into()));
    }
    let seconds = bytes.div_ceil(MIN_AUDIO_BYTES_PER_SECOND).max(1);
    let usage = if model.starts_with("whisper") {
        Usage {
            audio_millis: seconds * 1000,
            ..Usage::default()
        }
    } else {
        call.streaming = f.bool("stream")? == Some(true);
        let prompt = estimate_tokens(f.text_bytes(&["prompt"])?, reserve);
        Usage {
            input_tokens: prompt,
            audio_input_tokens: seconds * AUDIO_TOKENS_PER_SECOND,
            output_tokens: seconds * TRANSCRIPT_TOKENS_PER_SECOND,
            prompt_tokens: prompt + seconds * AUDIO_TOKENS_PER_SECOND,
            ..Usage::default()
        }
    };
    Ok(Estimate { usage, ..Estimate::default() })
}

/// The `usage` of a transcription.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(super) enum TranscriptionUsage {
    Duration {
        seconds: f64,
    },
    Tokens {
        #[serde(default)]
        input_tokens: u64,
        #[serde(default)]
        input_token_details: Option<InputTokenDetails>,
        #[serde(default)]
        output_tokens: u64,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct InputTokenDetails {
    audio_tokens: Option<u64>,
}

impl ToUsage for TranscriptionUsage {
    fn to_usage(&self) -> Usage {
        match self {
            TranscriptionUsage::Duration { seconds } => Usage {
                // Rounded up to the millisecond; a negative or absurd value counts as none.
                audio_millis: if seconds.is_finite() && *seconds > 0.0 {
                    (seconds * 1000.0).ceil().min(1e15) as u64
                } else {
                    0
                },
                ..Usage::default()
            },
            TranscriptionUsage::Tokens {
                input_tokens,
                input_token_details,
                output_tokens,
            } => {
                let audio = input_token_details.as_ref().and_then(|d| d.audio_tokens).unwrap_or(0).min(*input_tokens);
                Usage {
                    input_tokens: input_tokens - audio,
                    audio_input_tokens: audio,
                    output_tokens: *output_tokens,
                    prompt_tokens: *input_tokens,
                    ..Usage::default()
                }
            }
        }
    }
}
