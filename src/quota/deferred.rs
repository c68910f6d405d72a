//! Calls billed later: a call charged its reservation whose final usage a later answer
//! reports (an OpenAI background response, fetched when done). The ledger keeps what it
//! charged and where, so that the later answer can correct it.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::{Amounts, Plan};
use crate::config::ProviderKind;
use crate::providers::Usage;
use crate::tenant::Tenant;

/// Most calls waiting for their final usage; past it a new one keeps its reservation as its
/// bill.
const DEFERRED_MAX: usize = 100_000;

/// A call charged its reservation whose final usage a later answer will report.
pub struct Deferred {
    pub tenant: Tenant,
    /// The counters it touched, each holding the amount charged.
    pub plan: Plan,
    pub charged: Amounts,
    pub charged_usage: Usage,
    pub prices: ProviderKind,
    pub model: Option<String>,
    pub path: String,
    /// The call's attribution tags.
    pub tags: Vec<String>,
}

/// Calls billed later (background responses), by provider and id, until the answer that
/// carries their usage passes through this process. A later answer read by another replica
/// leaves the reservation as the bill.
#[derive(Default)]
pub struct DeferredCalls(Mutex<HashMap<(String, String), Deferred>>);

impl DeferredCalls {
    /// True when `id` of `provider` waits for its usage here.
    pub fn waits(&self, provider: &str, id: &str) -> bool {
        self.0.lock().contains_key(&(provider.to_string(), id.to_string()))
    }

    pub fn insert(&self, provider: &str, id: String, d: Deferred) {
        let mut map = self.0.lock();
        if map.len() < DEFERRED_MAX {
            map.insert((provider.to_string(), id), d);
        } else {
            tracing::warn!(
                provider,
                "too many calls wait for their final usage; this one keeps its reservation as its bill"
            );
        }
    }

    pub fn take(&self, provider: &str, id: &str) -> Option<Deferred> {
        self.0.lock().remove(&(provider.to_string(), id.to_string()))
    }

    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
