//! Process-wide pieces the planes share: the stop signal and the budget of request bodies
//! buffered at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

/// Resolves once `rx` reads true (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The bytes of request bodies buffered at once, over all requests.
#[derive(Debug, Default)]
pub struct BodyBudget {
    used: Arc<AtomicU64>,
}

impl BodyBudget {
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

/// One request's share of the [`BodyBudget`], given back when dropped.
#[derive(Debug)]
pub struct BudgetShare {
    used: Arc<AtomicU64>,
    max: u64,
    pub(crate) bytes: u64,
}

impl BudgetShare {
    pub fn new(budget: &BodyBudget, max: u64) -> Self {
        Self {
            used: budget.used.clone(),
            max,
            bytes: 0,
        }
    }

    /// Takes `n` more bytes of the budget; false (and nothing taken) when it would overflow.
    pub fn grow(&mut self, n: u64) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| used.checked_add(n).filter(|t| *t <= self.max));
        if taken.is_ok() {
            self.bytes += n;
        }
        taken.is_ok()
    }

    /// Gives `n` bytes of this share back.
    pub fn shrink(&mut self, n: u64) {
        let n = n.min(self.bytes);
        self.used.fetch_sub(n, Ordering::AcqRel);
        self.bytes -= n;
    }
}

impl Drop for BudgetShare {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_shares_are_bounded_and_given_back() {
        let budget = BodyBudget::default();
        let mut a = BudgetShare::new(&budget, 100);
        assert!(a.grow(60));
        let mut b = BudgetShare::new(&budget, 100);
        assert!(!b.grow(41));
        assert!(b.grow(40));
        assert_eq!(budget.used(), 100);
        a.shrink(10);
        assert_eq!(budget.used(), 90);
        assert!(b.grow(10));
        drop(a);
        assert_eq!(budget.used(), 50);
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
