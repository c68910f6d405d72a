//! Prices as data: the built-in table (`builtin.yaml`) overlaid with the config's `pricing:`,
//! looked up by provider and model glob, and applied to a [`Usage`] in integer pico-dollars.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::config::{Config, NonNegative, Pattern, PriceSpec, ProviderKind, Unpriced};
use crate::domain::money::{picos_to_nanos_ceil, usd_per_units_to_picos};
use crate::providers::Usage;

const BUILTIN: &str = include_str!("builtin.yaml");

/// Rates in pico-dollars per single unit (token, character, image, second, millisecond...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rates {
    pub input: i128,
    pub cached_input: i128,
    pub cache_write: i128,
    pub cache_write_1h: i128,
    pub output: i128,
    pub audio_input: i128,
    pub audio_output: i128,
    pub image_output: i128,
    pub character: i128,
    pub image: i128,
    pub video_second: i128,
    /// Per hour of input audio; applied to milliseconds with a ceiling division.
    pub audio_hour: i128,
    pub request: i128,
    pub web_search: i128,
    pub file_search: i128,
    pub code_session: i128,
    /// Above this many prompt tokens, `long` replaces the token rates for the whole request.
    pub long_context: Option<(u64, Box<Rates>)>,
}

fn rate(v: Option<NonNegative>, per: f64) -> Option<i128> {
    v.map(|n| usd_per_units_to_picos(n.0, per))
}

impl Rates {
    fn from_spec(s: &PriceSpec) -> Rates {
        const MTOK: f64 = 1e6;
        let input = rate(s.input_per_mtok, MTOK).unwrap_or(0);
        let output = rate(s.output_per_mtok, MTOK).unwrap_or(0);
        let character = rate(s.per_1k_chars, 1e3).or(rate(s.per_1m_chars, 1e6)).unwrap_or(0);
        let mut r = Rates {
            input,
            // Unlisted cache and modality rates fall back to the base rate of their side.
            cached_input: rate(s.cached_input_per_mtok, MTOK).unwrap_or(input),
            cache_write: rate(s.cache_write_per_mtok, MTOK).unwrap_or(input),
            cache_write_1h: rate(s.cache_write_1h_per_mtok, MTOK).or(rate(s.cache_write_per_mtok, MTOK)).unwrap_or(input),
            output,
            audio_input: rate(s.audio_input_per_mtok, MTOK).unwrap_or(input),
            audio_output: rate(s.audio_output_per_mtok, MTOK).unwrap_or(output),
            image_output: rate(s.image_output_per_mtok, MTOK).unwrap_or(output),
            character,
            image: rate(s.per_image, 1.0).unwrap_or(0),
            video_second: rate(s.per_video_second, 1.0).unwrap_or(0),
            audio_hour: rate(s.per_audio_hour, 1.0).unwrap_or(0),
            request: rate(s.per_request, 1.0).unwrap_or(0),
            web_search: rate(s.per_web_search, 1.0).unwrap_or(0),
            file_search: rate(s.per_file_search, 1.0).unwrap_or(0),
            code_session: rate(s.per_code_session, 1.0).unwrap_or(0),
            long_context: None,
        };
        if let Some(lc) = &s.long_context {
            let mut long = r.clone();
            if let Some(v) = rate(lc.input_per_mtok, MTOK) {
                long.input = v;
                long.audio_input = long.audio_input.max(v);
            }
            if let Some(v) = rate(lc.cached_input_per_mtok, MTOK) {
                long.cached_input = v;
            }
            if let Some(v) = rate(lc.output_per_mtok, MTOK) {
                long.output = v;
                long.audio_output = long.audio_output.max(v);
                long.image_output = long.image_output.max(v);
            }
            r.long_context = Some((lc.above_tokens, Box::new(long)));
        }
        r
    }

    /// The rate set that applies to a usage (long-context tier or not).
    fn tier(&self, usage: &Usage) -> &Rates {
        match &self.long_context {
            Some((above, long)) if usage.prompt_tokens > *above => long,
            _ => self,
        }
    }

    /// Exact cost in pico-dollars, with the usage's premium (rounded up).
    pub fn cost_picos(&self, usage: &Usage) -> i128 {
        let list = self.list_cost_picos(usage);
        match usage.premium_permille {
            0 => list,
            p => (list * (1000 + i128::from(p)) + 999) / 1000,
        }
    }

    fn list_cost_picos(&self, usage: &Usage) -> i128 {
        let r = self.tier(usage);
        let n = |x: u64| i128::from(x);
        n(usage.input_tokens) * r.input
            + n(usage.cached_input_tokens) * r.cached_input
            + n(usage.cache_write_tokens) * r.cache_write
            + n(usage.cache_write_1h_tokens) * r.cache_write_1h
            + n(usage.audio_input_tokens) * r.audio_input
            + n(usage.output_tokens) * r.output
            + n(usage.audio_output_tokens) * r.audio_output
            + n(usage.image_output_tokens) * r.image_output
            + n(usage.characters) * r.character
            + n(usage.images) * r.image
            + n(usage.video_seconds) * r.video_second
            + (n(usage.audio_millis) * r.audio_hour + 3_599_999) / 3_600_000
            + n(usage.web_searches) * r.web_search
            + n(usage.file_searches) * r.file_search
            + n(usage.code_sessions) * r.code_session
            + r.request
    }

    /// The field-wise maximum of two rate sets (for the `unpriced: default` policy).
    fn max_with(&mut self, o: &Rates) {
        let o_top = o.long_context.as_ref().map_or(o, |(_, l)| &**l);
        macro_rules! m { ($($f:ident),*) => { $( self.$f = self.$f.max(o.$f).max(o_top.$f); )* }; }
        m!(
            input,
            cached_input,
            cache_write,
            cache_write_1h,
            output,
            audio_input,
            audio_output,
            image_output,
            character,
            image,
            video_second,
            audio_hour,
            request,
            web_search,
            file_search,
            code_session
        );
    }
}

/// One model glob with its rates.
#[derive(Debug, Clone)]
struct Entry {
    pattern: Pattern,
    rates: Arc<Rates>,
    /// Literal characters, for "most specific glob wins".
    specificity: usize,
}

/// Entries for one provider key, from most to least specific.
#[derive(Debug, Clone, Default)]
struct ModelTable(Vec<Entry>);

impl ModelTable {
    fn insert(&mut self, glob: &str, spec: &PriceSpec) -> Result<(), String> {
        let pattern = Pattern::new(glob)?;
        let specificity = glob.chars().filter(|c| !matches!(c, '*' | '?' | '[' | ']' | '{' | '}')).count() + if pattern.is_literal() { 10_000 } else { 0 };
        self.0.retain(|e| e.pattern.as_str() != glob);
        self.0.push(Entry {
            pattern,
            rates: Arc::new(Rates::from_spec(spec)),
            specificity,
        });
        self.0.sort_by_key(|e| std::cmp::Reverse(e.specificity));
        Ok(())
    }

    fn find(&self, model: &str) -> Option<&Arc<Rates>> {
        self.0.iter().find(|e| e.pattern.is_match(model)).map(|e| &e.rates)
    }
}

/// How a usage was priced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    pub nanos: i64,
    /// No price matched the model: the `unpriced` policy applied.
    pub unpriced: bool,
}

/// The price table of one config generation.
#[derive(Debug, Clone)]
pub struct PriceTable {
    /// Keyed by provider name (config overrides) or kind (built-in + overrides by kind).
    tables: BTreeMap<String, ModelTable>,
    /// Field-wise most expensive rates per kind.
    most_expensive: BTreeMap<&'static str, Rates>,
    policy: Unpriced,
    /// Models already looked up, so that the globs are matched once per model rather than
    /// on every request.
    found: Arc<RateCache>,
}

/// Most models remembered per provider and price kind; model names come from requests, so
/// past it the memory starts over.
const MAX_CACHED_MODELS: usize = 1024;

/// price kind -> provider name -> model -> the rates found for it (looked up on every
/// request: foldhash, seeded per process, since model names come from requests).
type Found = Fast<ProviderKind, Fast<String, Fast<String, Option<Arc<Rates>>>>>;
type Fast<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
struct RateCache(RwLock<Found>);

impl RateCache {
    fn get(&self, provider_name: &str, kind: ProviderKind, model: &str) -> Option<Option<Arc<Rates>>> {
        self.0.read().get(&kind)?.get(provider_name)?.get(model).cloned()
    }

    fn insert(&self, provider_name: &str, kind: ProviderKind, model: &str, rates: Option<Arc<Rates>>) {
        let mut found = self.0.write();
        let models = found.entry(kind).or_default().entry(provider_name.to_string()).or_default();
        if models.len() >= MAX_CACHED_MODELS {
            models.clear();
        }
        models.insert(model.to_string(), rates);
    }
}

/// The table a kind's prices live under (Vertex shares Gemini's).
pub fn price_kind(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Vertex => "gemini",
        k => k.as_str(),
    }
}

/// The built-in list prices: price kind -> model glob -> prices.
pub fn builtin() -> Result<BTreeMap<String, BTreeMap<String, PriceSpec>>, String> {
    serde_norway::from_str(BUILTIN).map_err(|e| format!("built-in price table: {e}"))
}

/// The text of a glob before its first metacharacter: a model name it certainly covers
/// the start of.
fn literal_stem(glob: &str) -> &str {
    glob.find(['*', '?', '[', '{', '\\']).map_or(glob, |i| &glob[..i])
}

impl PriceTable {
    pub fn new(config: &Config) -> Result<PriceTable, String> {
        let builtin = builtin()?;
        let mut tables: BTreeMap<String, ModelTable> = BTreeMap::new();
        for (kind, models) in &builtin {
            let t = tables.entry(kind.clone()).or_default();
            for (glob, spec) in models {
                t.insert(glob, spec)?;
            }
        }
        for (key, models) in &config.pricing {
            // A key that is a provider *kind* overrides the shared table of that kind; a
            // provider *name* gets its own table consulted first.
            let key = match config.providers.iter().find(|(name, _)| *name == key) {
                Some((name, p)) if name.as_str() != p.kind.as_str() => format!("name:{name}"),
                Some((_, p)) => price_kind(p.kind).to_string(),
                None => key.clone(),
            };
            let t = tables.entry(key).or_default();
            for (glob, spec) in models {
                t.insert(glob, spec)?;
            }
        }
        let mut most_expensive: BTreeMap<&'static str, Rates> = BTreeMap::new();
        for kind in ["elevenlabs", "gemini", "openai", "anthropic"] {
            let mut top = Rates::default();
            let own = tables.get(kind).into_iter();
            let named = config
                .providers
                .iter()
                .filter(|(_, p)| price_kind(p.kind) == kind)
                .filter_map(|(n, _)| tables.get(&format!("name:{n}")));
            for t in own.chain(named) {
                for e in &t.0 {
                    top.max_with(&e.rates);
                }
            }
            // Per-request fees are model specific (sound effects); never add one by default.
            top.request = 0;
            most_expensive.insert(kind, top);
        }
        Ok(PriceTable {
            tables,
            most_expensive,
            policy: config.unpriced,
            found: Arc::default(),
        })
    }

    /// The rates for a model of a provider, if any price matches.
    pub fn rates(&self, provider_name: &str, kind: ProviderKind, model: &str) -> Option<Arc<Rates>> {
        if let Some(found) = self.found.get(provider_name, kind, model) {
            return found;
        }
        let found = self
            .tables
            .get(&format!("name:{provider_name}"))
            .and_then(|t| t.find(model))
            .or_else(|| self.tables.get(price_kind(kind)).and_then(|t| t.find(model)))
            .cloned();
        self.found.insert(provider_name, kind, model, found.clone());
        found
    }

    /// True when a price matches (or the policy makes that irrelevant).
    pub fn is_priced(&self, provider_name: &str, kind: ProviderKind, model: Option<&str>) -> bool {
        model.is_some_and(|m| self.rates(provider_name, kind, m).is_some())
    }

    pub fn policy(&self) -> Unpriced {
        self.policy
    }

    /// Whether a model named (or globbed) in the config can be priced on a provider. A name
    /// is looked up; a glob counts as priced when it overlaps a price entry: it matches the
    /// entry's literal stem, or the entry matches the glob's. A glob that overlaps nothing
    /// has no priced model at all.
    pub fn model_glob_is_priced(&self, provider_name: &str, kind: ProviderKind, glob: &Pattern) -> bool {
        if glob.is_literal() {
            return self.rates(provider_name, kind, glob.as_str()).is_some();
        }
        let stem = literal_stem(glob.as_str());
        [self.tables.get(&format!("name:{provider_name}")), self.tables.get(price_kind(kind))]
            .into_iter()
            .flatten()
            .flat_map(|t| t.0.iter())
            .any(|e| glob.is_match(literal_stem(e.pattern.as_str())) || e.pattern.is_match(stem))
    }

    /// Prices a usage. `models` are tried in order (the response's model, then the request's).
    pub fn price(&self, provider_name: &str, kind: ProviderKind, models: &[Option<&str>], usage: &Usage) -> Priced {
        let found = models.iter().flatten().find_map(|m| self.rates(provider_name, kind, m));
        match found {
            Some(r) => Priced {
                nanos: picos_to_nanos_ceil(r.cost_picos(usage)),
                unpriced: false,
            },
            None => {
                let nanos = match self.policy {
                    Unpriced::Zero => 0,
                    // `reject` refuses before forwarding when the request names the model;
                    // a model first seen in the response is charged like `default`.
                    Unpriced::Default | Unpriced::Reject => self
                        .most_expensive
                        .get(price_kind(kind))
                        .map_or(0, |r| picos_to_nanos_ceil(r.cost_picos(usage))),
                };
                Priced { nanos, unpriced: true }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(yaml: &str) -> PriceTable {
        PriceTable::new(&Config::from_yaml(yaml, "t").unwrap()).unwrap()
    }

    fn price(t: &PriceTable, kind: ProviderKind, model: &str, u: Usage) -> Priced {
        t.price(kind.as_str(), kind, &[Some(model)], &u)
    }

    #[test]
    fn gemini_flash_fixture_cost() {
        let t = table("");
        let u = Usage {
            input_tokens: 24,
            output_tokens: 801,
            prompt_tokens: 24,
            ..Usage::default()
        };
        // 24 * 0.30/M + 801 * 2.50/M = 0.0000072 + 0.0020025 = 0.0020097
        assert_eq!(price(&t, ProviderKind::Gemini, "gemini-2.5-flash", u).nanos, 2_009_700);
    }

    #[test]
    fn most_specific_glob_wins() {
        let t = table("");
        let u = Usage {
            input_tokens: 1_000_000,
            ..Usage::default()
        };
        assert_eq!(price(&t, ProviderKind::Gemini, "gemini-2.5-flash-lite", u.clone()).nanos, 100_000_000);
        assert_eq!(price(&t, ProviderKind::Gemini, "gemini-2.5-flash", u.clone()).nanos, 300_000_000);
        assert_eq!(price(&t, ProviderKind::Openai, "gpt-4o-mini-2024-07-18", u.clone()).nanos, 150_000_000);
        assert_eq!(price(&t, ProviderKind::Openai, "gpt-4o-2024-08-06", u).nanos, 2_500_000_000);
    }

    #[test]
    fn config_overrides_builtin_and_vertex_shares_gemini() {
        let t = table("pricing:\n  gemini:\n    \"gemini-2.5-flash\": {input_per_mtok: 1.0, output_per_mtok: 1.0}\n");
        let u = Usage {
            input_tokens: 1_000_000,
            ..Usage::default()
        };
        assert_eq!(price(&t, ProviderKind::Gemini, "gemini-2.5-flash", u.clone()).nanos, 1_000_000_000);
        assert_eq!(price(&t, ProviderKind::Vertex, "gemini-2.5-flash", u).nanos, 1_000_000_000);
    }

    #[test]
    fn long_context_tier_applies_to_the_whole_request() {
        let t = table("");
        let u = Usage {
            input_tokens: 250_000,
            output_tokens: 1_000,
            prompt_tokens: 250_000,
            ..Usage::default()
        };
        // 250k * 2.50/M + 1k * 15/M = 0.625 + 0.015
        assert_eq!(price(&t, ProviderKind::Gemini, "gemini-2.5-pro", u).nanos, 640_000_000);
    }

    #[test]
    fn unpriced_policies() {
        let u = Usage {
            characters: 1000,
            ..Usage::default()
        };
        let t = table("");
        let p = price(&t, ProviderKind::Elevenlabs, "eleven_v9_unknown", u.clone());
        assert!(p.unpriced);
        assert_eq!(p.nanos, 100_000_000, "most expensive ElevenLabs rate is $0.10/1K chars");
        let t = table("unpriced: zero\n");
        assert_eq!(price(&t, ProviderKind::Elevenlabs, "eleven_v9_unknown", u).nanos, 0);
    }

    #[test]
    fn model_globs_are_priced_when_they_overlap_an_entry() {
        let t = table("");
        let priced = |kind: ProviderKind, g: &str| t.model_glob_is_priced(kind.as_str(), kind, &Pattern::new(g).unwrap());
        assert!(priced(ProviderKind::Gemini, "imagen-*"));
        assert!(priced(ProviderKind::Vertex, "gemini-2.5-flash-preview-*"));
        assert!(priced(ProviderKind::Openai, "gpt-4o-mini"));
        assert!(priced(ProviderKind::Anthropic, "claude-*"));
        assert!(!priced(ProviderKind::Openai, "davinci-*"));
        assert!(!priced(ProviderKind::Openai, "gpt-4o-audio-preview"));
        assert!(!priced(ProviderKind::Anthropic, "gpt-*"));
    }

    #[test]
    fn builtin_covers_every_fixture_model() {
        let t = table("");
        for (kind, model) in [
            (ProviderKind::Openai, "gpt-5-mini-2025-08-07"),
            (ProviderKind::Openai, "gpt-4o-mini-2024-07-18"),
            (ProviderKind::Openai, "gpt-5-2025-08-07"),
            (ProviderKind::Openai, "gpt-4.1-mini-2025-04-14"),
            (ProviderKind::Openai, "text-embedding-3-small"),
            (ProviderKind::Openai, "tts-1"),
            (ProviderKind::Openai, "gpt-4o-mini-tts"),
            (ProviderKind::Anthropic, "claude-sonnet-4-5-20250929"),
            (ProviderKind::Anthropic, "claude-haiku-4-5-20251001"),
            (ProviderKind::Gemini, "imagen-4.0-generate-001"),
            (ProviderKind::Vertex, "veo-3.1-generate-preview"),
            (ProviderKind::Vertex, "gemini-2.5-flash"),
        ] {
            assert!(t.is_priced(kind.as_str(), kind, Some(model)), "{model}");
        }
        // The most specific glob wins: Sonnet 5.5 has its own cache-read rate.
        let u = Usage {
            cached_input_tokens: 1_000_000,
            ..Usage::default()
        };
        assert_eq!(price(&t, ProviderKind::Anthropic, "claude-sonnet-5-5-20261001", u.clone()).nanos, 100_000_000);
        assert_eq!(price(&t, ProviderKind::Anthropic, "claude-sonnet-5-20260601", u).nanos, 200_000_000);
    }

    #[test]
    fn per_hour_audio_rounds_up() {
        let t = table("");
        let u = Usage {
            audio_millis: 12_480,
            ..Usage::default()
        };
        // 12.48 s at $0.22/h = $0.000762666..., rounded up to the nano-dollar.
        assert_eq!(price(&t, ProviderKind::Elevenlabs, "scribe_v1", u).nanos, 762_667);
    }
}
