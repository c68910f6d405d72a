//! The ledger: the counters a request touches, the settlement that corrects them, the usage
//! history, and the [`Store`] trait its backends (`crate::store`) implement. The quota plans
//! which counters a request touches and which maxima apply; a store applies the plan
//! atomically.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::window::Window;
use crate::domain::Scope;

/// One counter: a field of a tenant's window bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CounterKey {
    pub scope: Scope,
    pub tenant: Arc<str>,
    pub window: Window,
    /// `2026-11-22` or `2026-11`.
    pub bucket: Arc<str>,
    /// `cost`, `tokens`, `requests`, `chars`, or one of those with `#<match id>`.
    pub field: Arc<str>,
}

impl CounterKey {
    /// True when both keys name the same tenant's window bucket (their fields may differ).
    /// A plan's keys share their tenant and bucket strings, so the pointers usually decide.
    pub fn same_bucket(&self, other: &CounterKey) -> bool {
        self.scope == other.scope
            && self.window == other.window
            && (Arc::ptr_eq(&self.bucket, &other.bucket) || self.bucket == other.bucket)
            && (Arc::ptr_eq(&self.tenant, &other.tenant) || self.tenant == other.tenant)
    }
}

/// One counter a request touches.
#[derive(Debug, Clone)]
pub struct CounterOp {
    pub key: CounterKey,
    /// Added when the request is admitted.
    pub amount: i64,
    /// When set, the request is refused if the counter is already at or above this value
    /// (and `amount` is positive).
    pub max: Option<i64>,
    /// A limit reads this counter when the request is admitted: its value before the request
    /// is wanted (and `max`, when set, checked). A store may leave an unwatched counter whose
    /// `amount` is zero out of the reservation (see [`Store::reserves_unwatched`]).
    pub watched: bool,
}

/// When the counter buckets of one request may be deleted, per window. Rate windows (minute,
/// hour) are kept a little past their end; days and months for the configured retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    pub minute: DateTime<Utc>,
    pub hour: DateTime<Utc>,
    pub daily: DateTime<Utc>,
    pub monthly: DateTime<Utc>,
}

impl Expiry {
    /// The same instant for every window.
    pub fn all(at: DateTime<Utc>) -> Expiry {
        Expiry {
            minute: at,
            hour: at,
            daily: at,
            monthly: at,
        }
    }

    /// When a bucket of `window` may be deleted.
    pub fn of(&self, window: Window) -> DateTime<Utc> {
        match window {
            Window::Minute => self.minute,
            Window::Hour => self.hour,
            Window::Daily => self.daily,
            Window::Monthly => self.monthly,
        }
    }
}

/// The atomic check-and-reserve of one request.
#[derive(Debug, Clone)]
pub struct ReserveRequest {
    /// Shared, so a store that keeps them past the call (the embedded store's writer) does
    /// not copy every key.
    pub ops: std::sync::Arc<[CounterOp]>,
    /// When the buckets may be deleted (per window: `expires.of(op.key.window)`).
    pub expires: Expiry,
    /// The call being reserved, for a store that records open calls (see
    /// [`Store::keeps_open_calls`]); its settlement carries the same id.
    pub call: Option<std::sync::Arc<OpenCall>>,
}

/// A call between its reservation and its settlement. A store that outlives a crash charges
/// the calls still open at the crash this record (the reservation's estimate), with reason
/// `crash`.
#[derive(Debug, Clone)]
pub struct OpenCall {
    pub id: String,
    pub record: UsageRecord,
}

/// The answer to a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// Admitted; every op was applied. `before[i]` is op i's value before this request.
    Admitted { before: Vec<i64> },
    /// Refused by op `index`, whose value was `current`; nothing was applied.
    Refused { index: usize, current: i64 },
}

/// Totals of usage over some span.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub requests: i64,
    pub cost_nanos: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    pub characters: i64,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) {
        self.requests += o.requests;
        self.cost_nanos += o.cost_nanos;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cached_tokens += o.cached_tokens;
        self.characters += o.characters;
    }

    pub fn is_zero(&self) -> bool {
        *self == Totals::default()
    }
}

/// What one finished request adds to its tenants' history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub at: DateTime<Utc>,
    /// The local day of `at` in the configured zone (history is kept per day).
    pub day: Arc<str>,
    pub profile: String,
    pub org: Option<String>,
    pub provider: Arc<str>,
    pub model: String,
    pub path: String,
    pub status: u16,
    /// Attribution tags as sent (`tool=script-writer`); a store bounds the distinct tags it
    /// keeps per tenant (see [`Store::settle`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    pub totals: Totals,
    /// Why the totals are an estimate rather than the provider's report (`timeout`, `cut`,
    /// `client_gone`, `crash`, ...); absent when they are the reported usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What settles a request: the correction of every reserved counter, and the record.
#[derive(Debug, Clone)]
pub struct Settlement {
    /// `(counter, actual - reserved)`; zero deltas may be omitted.
    pub deltas: Vec<(CounterKey, i64)>,
    pub record: UsageRecord,
    /// Id of this settlement, so a replay after an outage applies it once.
    pub id: String,
    /// When the buckets may be deleted (per window: `expires.of(key.window)`).
    pub expires: Expiry,
}

/// A tenant's history over a set of days.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// Day id -> totals, for the days that had traffic.
    pub days: BTreeMap<String, Totals>,
    pub by_provider: BTreeMap<String, Totals>,
    pub by_model: BTreeMap<String, Totals>,
    /// By attribution tag; a call with several tags counts under each.
    pub by_tag: BTreeMap<String, Totals>,
    /// Newest first.
    pub recent: Vec<UsageRecord>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("store error: {0}")]
    Other(String),
    /// The store can neither reach its backend nor count locally any more (the outage
    /// journal is full): the request must be refused whatever `on_error` says, since
    /// forwarding it would spend money that is never recorded.
    #[error("store saturated: {0}")]
    Saturated(String),
}

/// A ledger backend.
#[async_trait]
pub trait Store: Send + Sync {
    /// Checks every op's max and, if none refuses, adds every op's amount, atomically.
    async fn reserve(&self, req: &ReserveRequest) -> Result<ReserveOutcome, StoreError>;

    /// [`Store::reserve`] done at once, without waiting, by a store that can (the embedded
    /// store with batched durability): `Some(outcome)`. `None` (the default) means the store
    /// would have to wait, and nothing was done: the caller awaits [`Store::reserve`].
    fn reserve_now(&self, _req: &ReserveRequest) -> Option<Result<ReserveOutcome, StoreError>> {
        None
    }

    /// Applies a settlement (counter corrections and history). The history counts the record
    /// under each of its tags, keeping at most `store.max_tags` distinct tags per tenant: a
    /// tenant's tags past that bound are counted as `other`.
    async fn settle(&self, s: &Settlement) -> Result<(), StoreError>;

    /// [`Store::settle`] for a caller that is done with the settlement: a store that keeps it
    /// (the embedded store's writer) takes it without copying.
    async fn settle_owned(&self, s: Settlement) -> Result<(), StoreError> {
        self.settle(&s).await
    }

    /// [`Store::settle_owned`] done at once, without waiting, by a store that can (the
    /// embedded store: its counters in memory and a message to its writer): `None`. A store
    /// that would have to wait, or cannot settle now for any reason, hands the settlement back
    /// untouched (`Some`, the default) for [`Store::settle_owned`], which reports its
    /// failures: a settlement is never lost here. Settling does this first, which saves an
    /// awaited call (and the allocations of its boxed futures) on every call the embedded
    /// store settles.
    fn settle_now(&self, s: Settlement) -> Option<Settlement> {
        Some(s)
    }

    /// Current values of counters (0 when absent).
    async fn read(&self, keys: &[CounterKey]) -> Result<Vec<i64>, StoreError>;

    /// A tenant's history over `days` (day ids), with at most `recent` recent records. The
    /// Redis store also accepts month ids (`2026-11`) and reads its monthly history for them,
    /// which reaches further back than the daily history's retention.
    async fn history(&self, scope: Scope, tenant: &str, days: &[String], recent: usize) -> Result<History, StoreError>;

    /// Every tenant of a scope that has history.
    async fn tenants(&self, scope: Scope) -> Result<Vec<String>, StoreError>;

    /// Every tenant of a scope with usage in `periods` (day ids `2026-11-22` or month ids
    /// `2026-11`, as for [`Store::history`]) and its totals summed over them: what a listing
    /// sorted by spend reads for the whole fleet at once. The default asks
    /// [`Store::history`] tenant by tenant; a backend that can, answers in one read.
    async fn tenant_totals(&self, scope: Scope, periods: &[String]) -> Result<HashMap<String, Totals>, StoreError> {
        let mut out = HashMap::new();
        for tenant in self.tenants(scope).await? {
            let h = self.history(scope, &tenant, periods, 0).await?;
            let mut sum = Totals::default();
            h.days.values().for_each(|d| sum.add(d));
            if !sum.is_zero() {
                out.insert(tenant, sum);
            }
        }
        Ok(out)
    }

    /// The org a profile belongs to, shared by every replica: the one already remembered, or
    /// else `org`, which is remembered from now on (`None` remembers that the profile belongs
    /// to no org). Bindings never expire.
    async fn bind_org(&self, profile: &str, org: Option<&str>) -> Result<Option<String>, StoreError>;

    /// True when the store wants [`ReserveRequest::call`] filled in.
    fn keeps_open_calls(&self) -> bool {
        false
    }

    /// False when the store would rather have the counters no limit reads (a tenant's base
    /// counters without a limit on them) added by the settlement than by the reservation:
    /// the request path then reserves zero on them ([`crate::quota::Plan::defer_unwatched`])
    /// and the settlement adds the whole amount. A limit added later counts what was settled,
    /// not what is in flight. A store that charges a crashed call from its reservation keeps
    /// the default.
    fn reserves_unwatched(&self) -> bool {
        true
    }

    /// Claims a one-time event shared by every replica (an alert of one limit, threshold and
    /// window): `true` for the first claim of `key` until `expires`, `false` for every later
    /// one. Redis: `SET key 1 NX EXAT expires`.
    async fn claim_alert(&self, key: &str, expires: DateTime<Utc>) -> Result<bool, StoreError>;

    /// Reachability, for `/readyz` and `spendgate check`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Persists what must survive a restart (snapshot, journal). Called periodically and on
    /// shutdown.
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The backend's name for logs and metrics.
    fn name(&self) -> &'static str;
}
