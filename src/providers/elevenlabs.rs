//! ElevenLabs: one table of every route the SDK calls, each metered, free or refused.
//!
//! Metered calls are priced from the request: text to speech and dialogue by the characters
//! of their text (exact); sound effects, music, the voice changer and audio isolation by a
//! duration (requested, or bounded from the size of the upload); speech to text by the
//! duration the transcript reports. When the response carries a `character-cost` header
//! (credits, after model and voice multipliers) the charge is raised to it if it is higher,
//! so a voice with a price multiplier is never charged below the provider's bill.
//!
//! Refused by default: calls whose bill comes later or out of sight (dubbing, Studio, flows,
//! productions, agent conversations and telephony, music uploads), calls that mint a
//! credential usable without the proxy, WebSocket sessions, and paid calls whose unit is not
//! known (voice design, forced alignment, stem separation).

mod routes;

use http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;

pub use self::routes::Kind;
use super::metered::{Metered, Noted, Reader, Report};
use super::{Call, Estimate, FixedCost, Provider, Refusal, RequestBody, RequestInfo, Source, Usage, UsageExtractor};
use crate::config::{ProviderKind, ReserveConfig};
use crate::wire::json_scan::{JsonScanner, Record};
use crate::wire::multipart::Form;

/// The model ElevenLabs uses for text to speech when the request names none.
pub const DEFAULT_TTS_MODEL: &str = "eleven_multilingual_v2";
/// The model text to dialogue uses when the request names none.
pub const DEFAULT_DIALOGUE_MODEL: &str = "eleven_v3";
/// The model used for sound effects when the request names none.
pub const DEFAULT_SOUND_MODEL: &str = "eleven_text_to_sound_v2";
/// The model used for speech to text when the form names none.
pub const DEFAULT_STT_MODEL: &str = "scribe_v1";
/// The voice changer's default model.
pub const DEFAULT_STS_MODEL: &str = "eleven_multilingual_sts_v2";
/// The music model when the request names none.
pub const DEFAULT_MUSIC_MODEL: &str = "music_v1";
/// Audio isolation takes no model; its price entry is under this name.
pub const AUDIO_ISOLATION_MODEL: &str = "audio_isolation";

/// Bytes of uploaded audio per second assumed for the speech-to-text reservation (128 kbit/s,
/// the common MP3 rate). The transcript reports the real duration, which is what is charged.
const STT_BYTES_PER_SECOND: u64 = 16_000;
/// Bytes per second of the lowest-bitrate audio an upload can plausibly hold (4 kbit/s, below
/// every speech codec in use: AMR-NB's lowest mode is 4.75 kbit/s, Opus's 6 kbit/s). Dividing
/// an upload's size by it bounds the audio's duration from above, for the calls billed by
/// duration whose response does not report it.
const MIN_AUDIO_BYTES_PER_SECOND: u64 = 500;
/// Speech to text bills every channel at the full duration with `use_multi_channel`; the API
/// accepts at most this many channels.
const STT_MAX_CHANNELS: u64 = 5;
/// Sound effects without `duration_seconds` cost a flat 100 credits; with it, 20 credits per
/// second. Durations are priced per second, so the flat charge is priced as 5 seconds.
const SOUND_AUTO_MILLIS: u64 = 5_000;
/// Milliseconds of sound effect per credit (20 credits per second).
const SOUND_MILLIS_PER_CREDIT: u64 = 50;
/// Milliseconds of input audio per credit for the voice changer and audio isolation (1,000
/// credits per minute).
const AUDIO_MILLIS_PER_CREDIT: u64 = 60;
/// The longest song music generation produces (`music_length_ms` at most 600,000): the
/// reservation and charge when neither a length nor a composition plan says how long.
const MUSIC_MAX_MILLIS: u64 = 600_000;

pub struct ElevenLabs;

/// An ElevenLabs call: how it is estimated, and whether its charge is the bound from the
/// upload (speech to text delivered by webhook, or over several channels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    pub kind: Kind,
    /// The route's name, for logs.
    pub name: &'static str,
    pub upload_bound: bool,
}

impl Ctx {
    pub fn name(&self) -> &'static str {
        if self.upload_bound {
            routes::STT_BOUND
        } else {
            self.name
        }
    }
}

impl Provider for ElevenLabs {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Elevenlabs
    }

    fn classify(&self, req: &RequestInfo<'_>) -> Call {
        routes::classify(req)
    }

    fn estimate(&self, call: &mut Call, req: &RequestInfo<'_>, body: &RequestBody<'_>, _reserve: &ReserveConfig) -> Result<Estimate, Refusal> {
        let (model, usage) = match call.context_of::<Ctx>()?.kind {
            Kind::Tts => tts(body)?,
            Kind::Dialogue => dialogue(body)?,
            Kind::Sound => sound(body)?,
            Kind::Music => music(body)?,
            Kind::VoiceChanger => upload_bound(req, body, DEFAULT_STS_MODEL)?,
            Kind::Isolation => upload_bound(req, body, AUDIO_ISOLATION_MODEL)?,
            Kind::SpeechToText => return speech_to_text(call, req, body),
        };
        call.model = Some(model);
        Ok(Estimate { usage, ..Estimate::default() })
    }

    fn extractor(&self, call: &Call, _status: StatusCode, headers: &HeaderMap, estimate: &Usage) -> Box<dyn UsageExtractor> {
        let model = call.model.as_deref().unwrap_or_default();
        let credits = character_cost(headers);
        let ctx = call.own_context::<Ctx>();
        match ctx.kind {
            Kind::SpeechToText if !ctx.upload_bound => Box::new(Metered::json(
                SpeechToText::default(),
                JsonScanner::new(1, &["audio_duration_secs", "words"], &[]),
                estimate,
            )),
            Kind::Tts | Kind::Dialogue => exact(raise_characters(estimate, credits, model)),
            Kind::Sound => exact(raise_millis(estimate, credits, SOUND_MILLIS_PER_CREDIT)),
            Kind::VoiceChanger | Kind::Isolation => bound(raise_millis(estimate, credits, AUDIO_MILLIS_PER_CREDIT)),
            // Music, and speech to text whose transcript is not read: the bound stands.
            Kind::Music | Kind::SpeechToText => bound(estimate.clone()),
        }
    }
}

fn exact(usage: Usage) -> Box<dyn UsageExtractor> {
    Box::new(FixedCost::new(usage, Source::Reported))
}

fn bound(usage: Usage) -> Box<dyn UsageExtractor> {
    Box::new(FixedCost::new(usage, Source::Estimated))
}

/// Reads a JSON body into a request shape, refusing one the provider would not accept
/// (a billed field missing or of the wrong type).
fn read<T: DeserializeOwned>(body: &RequestBody<'_>) -> Result<T, Refusal> {
    T::deserialize(body.object()?).map_err(|e| Refusal::InvalidBody(format!("the request body cannot be read: {e}")))
}

/// The request's `model_id`, or the endpoint's default.
fn model_or(model_id: Option<String>, default: &str) -> String {
    model_id.filter(|m| !m.is_empty()).unwrap_or_else(|| default.to_string())
}

fn characters(text: &str) -> u64 {
    text.chars().count() as u64
}

#[derive(Deserialize)]
struct TtsBody {
    text: String,
    #[serde(default)]
    model_id: Option<String>,
}

fn tts(body: &RequestBody<'_>) -> Result<(String, Usage), Refusal> {
    let b: TtsBody = read(body)?;
    Ok((
        model_or(b.model_id, DEFAULT_TTS_MODEL),
        Usage {
            characters: characters(&b.text),
            ..Usage::default()
        },
    ))
}

#[derive(Deserialize)]
struct DialogueBody {
    inputs: Vec<DialogueInput>,
    #[serde(default)]
    model_id: Option<String>,
}

#[derive(Deserialize)]
struct DialogueInput {
    text: String,
}

fn dialogue(body: &RequestBody<'_>) -> Result<(String, Usage), Refusal> {
    let b: DialogueBody = read(body)?;
    if b.inputs.is_empty() {
        return Err(Refusal::InvalidBody("the member \"inputs\" must hold at least one line of dialogue".into()));
    }
    Ok((
        model_or(b.model_id, DEFAULT_DIALOGUE_MODEL),
        Usage {
            characters: b.inputs.iter().map(|i| characters(&i.text)).sum(),
            ..Usage::default()
        },
    ))
}

#[derive(Deserialize)]
struct SoundBody {
    /// Required by the provider; not billed.
    #[serde(rename = "text")]
    _text: String,
    #[serde(default)]
    duration_seconds: Option<f64>,
    #[serde(default)]
    model_id: Option<String>,
}

fn sound(body: &RequestBody<'_>) -> Result<(String, Usage), Refusal> {
    let b: SoundBody = read(body)?;
    let millis = match b.duration_seconds {
        None => SOUND_AUTO_MILLIS,
        Some(s) if s > 0.0 && s <= 3600.0 => (s * 1000.0).ceil() as u64,
        Some(_) => {
            return Err(Refusal::InvalidBody(
                "the member \"duration_seconds\" must be a positive number of seconds".into(),
            ))
        }
    };
    Ok((
        model_or(b.model_id, DEFAULT_SOUND_MODEL),
        Usage {
            audio_millis: millis,
            ..Usage::default()
        },
    ))
}

#[derive(Deserialize)]
struct MusicBody {
    #[serde(default)]
    music_length_ms: Option<u64>,
    #[serde(default)]
    composition_plan: Option<CompositionPlan>,
    #[serde(default)]
    model_id: Option<String>,
}

#[derive(Deserialize)]
struct CompositionPlan {
    sections: Vec<Section>,
}

#[derive(Deserialize)]
struct Section {
    duration_ms: u64,
}

/// Music is billed per minute of the song: its requested length, else the sum of its
/// composition plan's sections, else the longest song the API makes.
fn music(body: &RequestBody<'_>) -> Result<(String, Usage), Refusal> {
    let b: MusicBody = read(body)?;
    let planned = b
        .composition_plan
        .map(|p| p.sections.iter().fold(0u64, |sum, s| sum.saturating_add(s.duration_ms)));
    let millis = b.music_length_ms.or(planned).unwrap_or(MUSIC_MAX_MILLIS);
    Ok((
        model_or(b.model_id, DEFAULT_MUSIC_MODEL),
        Usage {
            audio_millis: millis.max(1),
            ..Usage::default()
        },
    ))
}

/// Form fields that make the service fetch the audio from elsewhere: its length is then not
/// bounded by the upload.
const REMOTE_AUDIO_FIELDS: &[&str] = &["cloud_storage_url", "source_url"];

/// Reads the multipart form of an audio upload and refuses one whose audio is not in it.
fn audio_form<'a>(req: &RequestInfo<'_>, body: &RequestBody<'a>) -> Result<Form<'a>, Refusal> {
    let form = Form::read(req.headers, body.bytes)?;
    // Present at all, whatever its value or how often: the service may fetch the audio.
    if let Some(field) = REMOTE_AUDIO_FIELDS.iter().find(|f| form.named(f).next().is_some()) {
        return Err(Refusal::NotMetered(format!(
            "the form's {field} makes the service fetch the audio itself, so its length is unknown before the call"
        )));
    }
    if form.files() == 0 {
        return Err(Refusal::InvalidBody("the form carries no audio file".into()));
    }
    Ok(form)
}

/// A boolean form field as the provider's form reader takes it (absent is false); refused when
/// it is not one of the spellings that reader accepts.
fn flag(form: &Form<'_>, name: &str) -> Result<bool, Refusal> {
    let Some(v) = form.text(name)? else {
        return Ok(false);
    };
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "t" | "y" => Ok(true),
        "false" | "0" | "no" | "off" | "f" | "n" => Ok(false),
        _ => Err(Refusal::InvalidBody(format!("the form field {name:?} must be true or false"))),
    }
}

/// The duration an upload of `bytes` can hold at most, in milliseconds.
fn upload_millis_bound(bytes: usize) -> u64 {
    (bytes as u64).saturating_mul(1000).div_ceil(MIN_AUDIO_BYTES_PER_SECOND)
}

/// Calls billed per minute of uploaded audio whose response does not report it: the bound
/// from the upload's size.
fn upload_bound(req: &RequestInfo<'_>, body: &RequestBody<'_>, default_model: &str) -> Result<(String, Usage), Refusal> {
    let form = audio_form(req, body)?;
    let model = model_or(form.text("model_id")?.map(str::to_string), default_model);
    Ok((
        model,
        Usage {
            audio_millis: upload_millis_bound(body.bytes.len()),
            ..Usage::default()
        },
    ))
}

/// Speech to text: reserved from the upload's size and charged the duration the transcript
/// reports; with `webhook` the transcript comes later, and with `use_multi_channel` every
/// channel is billed, so those are charged the bound from the upload's size.
fn speech_to_text(call: &mut Call, req: &RequestInfo<'_>, body: &RequestBody<'_>) -> Result<Estimate, Refusal> {
    let form = audio_form(req, body)?;
    call.model = Some(model_or(form.text("model_id")?.map(str::to_string), DEFAULT_STT_MODEL));
    let bytes = body.bytes.len() as u64;
    let later = flag(&form, "webhook")?;
    let channels = if flag(&form, "use_multi_channel")? { STT_MAX_CHANNELS } else { 1 };
    let audio_millis = if later || channels > 1 {
        let ctx = *call.context_of::<Ctx>()?;
        call.context = Ctx { upload_bound: true, ..ctx }.into();
        upload_millis_bound(body.bytes.len()).saturating_mul(channels)
    } else {
        bytes.saturating_mul(1000).div_ceil(STT_BYTES_PER_SECOND)
    };
    Ok(Estimate {
        usage: Usage {
            audio_millis: audio_millis.max(1),
            ..Usage::default()
        },
        ..Estimate::default()
    })
}

/// The credits a response's `character-cost` header reports, if it is readable.
fn character_cost(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get("character-cost")?.to_str().ok()?.trim();
    v.parse::<u64>()
        .ok()
        .or_else(|| v.parse::<f64>().ok().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f.ceil() as u64))
}

/// Half-credits per character: Flash and Turbo models cost half a credit per character, the
/// others one.
fn half_credits_per_char(model: &str) -> u64 {
    if model.contains("flash") || model.contains("turbo") {
        1
    } else {
        2
    }
}

/// The estimate, its characters raised to what the reported credits pay for.
fn raise_characters(estimate: &Usage, credits: Option<u64>, model: &str) -> Usage {
    let mut usage = estimate.clone();
    if let Some(c) = credits {
        usage.characters = usage.characters.max(c.saturating_mul(2).div_ceil(half_credits_per_char(model)));
    }
    usage
}

/// The estimate, its audio duration raised to what the reported credits pay for.
fn raise_millis(estimate: &Usage, credits: Option<u64>, millis_per_credit: u64) -> Usage {
    let mut usage = estimate.clone();
    if let Some(c) = credits {
        usage.audio_millis = usage.audio_millis.max(c.saturating_mul(millis_per_credit));
    }
    usage
}

/// Reads the audio duration out of a transcript: `audio_duration_secs`, else the end of the
/// last word.
#[derive(Default)]
struct SpeechToText {
    duration_ms: Option<u64>,
    noted: Noted,
}

#[derive(Deserialize)]
struct Word {
    #[serde(default)]
    end: Option<f64>,
}

impl Reader for SpeechToText {
    fn record(&mut self, record: &Record) -> bool {
        let secs = record
            .get("audio_duration_secs")
            .and_then(|v| serde_json::from_slice::<f64>(v).ok())
            .or_else(|| {
                let words: Vec<Word> = serde_json::from_slice(record.get("words")?).ok()?;
                words.iter().rev().find_map(|w| w.end)
            });
        if let Some(s) = secs.filter(|s| s.is_finite() && *s >= 0.0) {
            self.duration_ms = Some((s * 1000.0).ceil() as u64);
        }
        true
    }

    fn reported(&mut self) -> Option<Report> {
        self.duration_ms.map(|audio_millis| Report {
            usage: Usage {
                audio_millis,
                ..Usage::default()
            },
            last: true,
        })
    }

    fn noted(&mut self) -> &mut Noted {
        &mut self.noted
    }
}

#[cfg(test)]
mod tests;
