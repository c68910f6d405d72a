//! Videos (Sora): `POST /videos`, JSON or multipart (with an input reference image). A video
//! is billed per second at a rate set by model and size, all known from the request, so the
//! estimate is the bill. The job may still fail later; charging it anyway errs on the safe side.

use super::super::{Call, Estimate, Refusal, Usage};
use super::fields::{self, Fields};

/// API defaults (videos reference): `sora-2`, 4 seconds, 720x1280.
const DEFAULT_MODEL: &str = "sora-2";
const DEFAULT_SECONDS: u64 = 4;
const DEFAULT_SIZE: &str = "720x1280";
/// Longest video the API makes (`seconds` is one of 4, 8, 12; newer models allow up to 25).
const MAX_SECONDS: u64 = 60;

pub(super) fn estimate(call: &mut Call, f: &Fields<'_>) -> Result<Estimate, Refusal> {
    let model = fields::model(f, call, Some(DEFAULT_MODEL))?;
    let seconds = f.digits("seconds")?.unwrap_or(DEFAULT_SECONDS);
    if !(1..=MAX_SECONDS).contains(&seconds) {
        return Err(Refusal::InvalidBody(format!("the video length {seconds} is not 1 to {MAX_SECONDS} seconds")));
    }
    let size = f.str("size")?.unwrap_or(DEFAULT_SIZE);
    Ok(Estimate {
        usage: Usage {
            video_seconds: seconds,
            premium_permille: size_premium(&model, size)?,
            ..Usage::default()
        },
        ..Estimate::default()
    })
}

/// The premium over the model's 720p rate: `sora-2-pro` is $0.30 a second at 720p and $0.50
/// at 1024x1792: 5/3 of it, 667 permille above (rounded up).
fn size_premium(model: &str, size: &str) -> Result<u64, Refusal> {
    let pro = model.starts_with("sora-2-pro");
    match size {
        "720x1280" | "1280x720" if model.starts_with("sora-2") => Ok(0),
        "1024x1792" | "1792x1024" if pro => Ok(667),
        _ => Err(Refusal::NotMetered(format!("{model} at size {size:?} is not a video the proxy can price"))),
    }
}
