//! Images: `/images/generations` (JSON), `/images/edits` (multipart, or JSON naming stored
//! images) and `/images/variations` (multipart, DALL·E 2).
//!
//! DALL·E models are billed per image by model, size and quality, known exactly from the
//! request: the price table lists each model's cheapest image (`per_image`) and the size and
//! quality raise it through [`Usage::premium_permille`] (DALL·E 3 at $0.04 / $0.08 / $0.12,
//! DALL·E 2 at $0.016 / $0.018 / $0.020). GPT Image models are billed by tokens, read from
//! the response's `usage` (the `*.completed` event of a stream); the reservation bounds them
//! from the request.

use serde::Deserialize;

use super::super::metered::ToUsage;
use super::super::{estimate_tokens, Call, Estimate, Refusal, Usage};
use super::fields::{self, Fields};
use super::{Ctx, Endpoint};
use crate::config::ReserveConfig;

/// Image output tokens per megapixel that bound one GPT Image picture at any quality: the
/// highest density OpenAI's cost calculator gives (7024 tokens for a high-quality 1024x1024
/// picture of `gpt-image-2`; `gpt-image-1` needs 4160 for it and 6240 for 1024x1536).
const IMAGE_TOKENS_PER_MEBIPIXEL: u64 = 7024;
/// The size `auto` is bounded as the largest standard size, 1536x1024.
const AUTO_PIXELS: u64 = 1536 * 1024;
/// Each partial image of a stream costs 100 more image output tokens (image generation guide).
const PARTIAL_IMAGE_TOKENS: u64 = 100;
/// Input tokens reserved per input image of an edit (a 1536x1024 picture at high input
/// fidelity is a few thousand tokens; this allows for more).
const INPUT_IMAGE_TOKENS: u64 = 10_000;
/// Form parts and JSON members that carry input images.
const IMAGE_INPUTS: &[&str] = &["image", "image[]", "images"];

/// The endpoint name of DALL·E calls, whose cost is exact from the request.
pub(super) const PER_IMAGE: &str = "images_per_image";

pub(super) fn estimate(call: &mut Call, ctx: &mut Ctx, f: &Fields<'_>, reserve: &ReserveConfig) -> Result<Estimate, Refusal> {
    let variation = ctx.endpoint == Endpoint::ImageVariations;
    let model = fields::model(f, call, variation.then_some("dall-e-2"))?;
    let n = f.u64("n")?.unwrap_or(1);
    if n == 0 {
        return Err(Refusal::InvalidBody("the member \"n\" must be at least 1".into()));
    }
    let size = f.str("size")?;
    let quality = f.str("quality")?;
    let usage = if model.starts_with("dall-e-") {
        ctx.per_image = true;
        Usage {
            images: n,
            premium_permille: dalle_premium(&model, size, quality)?,
            ..Usage::default()
        }
    } else if model.starts_with("gpt-image-") || model.starts_with("chatgpt-image-") {
        call.streaming = f.bool("stream")? == Some(true);
        gpt_image_bound(f, n, size, reserve)?
    } else {
        return Err(Refusal::NotMetered(format!("the image model {model:?} is not one the proxy can price")));
    };
    Ok(Estimate { usage, ..Estimate::default() })
}

/// The premium over the model's cheapest picture for a DALL·E size and quality.
fn dalle_premium(model: &str, size: Option<&str>, quality: Option<&str>) -> Result<u64, Refusal> {
    let size = size.unwrap_or("1024x1024");
    let premium = match (model, quality.unwrap_or("standard"), size) {
        ("dall-e-2", "standard" | "auto", "256x256") => Some(0),
        ("dall-e-2", "standard" | "auto", "512x512") => Some(125),
        ("dall-e-2", "standard" | "auto", "1024x1024") => Some(250),
        ("dall-e-3", "standard", "1024x1024") => Some(0),
        ("dall-e-3", "standard", "1792x1024" | "1024x1792") => Some(1000),
        // `auto` may choose hd: charged as hd.
        ("dall-e-3", "hd" | "auto", "1024x1024") => Some(1000),
        ("dall-e-3", "hd" | "auto", "1792x1024" | "1024x1792") => Some(2000),
        _ => None,
    };
    premium.ok_or_else(|| Refusal::NotMetered(format!("{model} at size {size:?} and quality {quality:?} is not one the proxy can price")))
}

/// The reservation of a GPT Image call: the prompt and input images, and `n` pictures of the
/// requested size at the highest token density, with their partial images.
fn gpt_image_bound(f: &Fields<'_>, n: u64, size: Option<&str>, reserve: &ReserveConfig) -> Result<Usage, Refusal> {
    let pixels = match size {
        None | Some("auto") => AUTO_PIXELS,
        Some(s) => pixels(s).ok_or_else(|| Refusal::InvalidBody(format!("the image size {s:?} is not WIDTHxHEIGHT")))?,
    };
    let per_image = (pixels * IMAGE_TOKENS_PER_MEBIPIXEL).div_ceil(1 << 20) + f.u64("partial_images")?.unwrap_or(0) * PARTIAL_IMAGE_TOKENS;
    let (input_images, _) = f.files(IMAGE_INPUTS);
    let input = estimate_tokens(f.text_bytes(&["prompt"])?, reserve) + input_images * INPUT_IMAGE_TOKENS;
    Ok(Usage {
        input_tokens: input,
        image_output_tokens: n.saturating_mul(per_image),
        prompt_tokens: input,
        ..Usage::default()
    })
}

/// Pixels of a `WIDTHxHEIGHT` size (each side at most 16384).
fn pixels(size: &str) -> Option<u64> {
    let (w, h) = size.split_once('x')?;
    let side = |s: &str| s.parse::<u64>().ok().filter(|v| (1..=16_384).contains(v) && !s.starts_with('+'));
    Some(side(w)? * side(h)?)
}

/// The `usage` of a GPT Image answer: input is text and image tokens (priced at one input
/// rate), output is image tokens and, for some models, text tokens.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct ImageUsage {
    input_tokens: u64,
    input_tokens_details: Option<ImageInputDetails>,
    output_tokens: u64,
    output_tokens_details: Option<ImageOutputDetails>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ImageInputDetails {
    cached_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ImageOutputDetails {
    text_tokens: Option<u64>,
}

impl ToUsage for ImageUsage {
    fn to_usage(&self) -> Usage {
        let cached = self
            .input_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0)
            .min(self.input_tokens);
        let text_out = self
            .output_tokens_details
            .as_ref()
            .and_then(|d| d.text_tokens)
            .unwrap_or(0)
            .min(self.output_tokens);
        Usage {
            input_tokens: self.input_tokens - cached,
            cached_input_tokens: cached,
            output_tokens: text_out,
            image_output_tokens: self.output_tokens - text_out,
            prompt_tokens: self.input_tokens,
            ..Usage::default()
        }
    }
}

impl ImageUsage {
    /// The usage of several completed images of one stream, added up.
    pub(super) fn add(total: &mut Usage, more: &Usage) {
        total.input_tokens += more.input_tokens;
        total.cached_input_tokens += more.cached_input_tokens;
        total.output_tokens += more.output_tokens;
        total.image_output_tokens += more.image_output_tokens;
        total.prompt_tokens += more.prompt_tokens;
    }
}
