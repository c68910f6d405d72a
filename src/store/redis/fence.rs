//! The local fence: how this replica enforces limits while Redis cannot be reached.
//!
//! For every counter a limit watches, the fence remembers the last value this replica read
//! from Redis (each reservation returns it); for every counter, it adds what this replica
//! counted since that Redis has not seen yet (the journal's entries). While Redis is down a
//! request is admitted or refused against `last read + counted since`, with the same rule
//! as Redis. This is best effort, and documented as such: what other replicas spend during
//! the outage is not seen, and a counter this replica never read starts from what it
//! counted itself.
//!
//! After Redis answers again, the amounts not yet replayed are also added to the check in
//! Redis (the max is lowered by them), so that the replay running in the background never
//! opens a window where they are forgotten.

use std::collections::HashMap;

use crate::quota::ledger::ReserveOutcome;

/// A counter: its Redis key and field.
pub type Cell = (String, std::sync::Arc<str>);

#[derive(Debug, Clone, Copy)]
struct Read {
    value: i64,
    /// Unix seconds after which the counter's window is over and the value can be dropped.
    expires: i64,
}

/// One counter of a reservation decided locally.
pub struct FenceOp<'a> {
    pub cell: &'a Cell,
    pub amount: i64,
    pub max: Option<i64>,
    pub expires: i64,
}

/// The maps are looked up on every reservation: a fast hasher (their keys are this
/// replica's own key names, not chosen by clients).
type Map<V> = HashMap<Cell, V, foldhash::fast::RandomState>;

pub struct Fence {
    reads: Map<Read>,
    pending: Map<i64>,
    max_cells: usize,
}

impl Fence {
    pub fn new(max_cells: usize) -> Fence {
        Fence {
            reads: Map::default(),
            pending: Map::default(),
            max_cells: max_cells.max(16),
        }
    }

    /// Whether this replica counted anything that Redis has not applied yet.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// What this replica counted for `cell` that Redis has not applied yet.
    pub fn pending(&self, cell: &Cell) -> i64 {
        self.pending.get(cell).copied().unwrap_or(0)
    }

    /// The local view of a counter: last read plus counted since.
    pub fn value(&self, cell: &Cell) -> i64 {
        self.reads.get(cell).map_or(0, |r| r.value).saturating_add(self.pending(cell))
    }

    /// Records a value read from Redis (which excludes this replica's pending amounts).
    pub fn observe(&mut self, cell: &Cell, value: i64, expires: i64) {
        if let Some(r) = self.reads.get_mut(cell) {
            r.value = value;
            r.expires = r.expires.max(expires);
            return;
        }
        if self.reads.len() >= self.max_cells {
            self.evict();
        }
        self.reads.insert(cell.clone(), Read { value, expires });
    }

    /// A change Redis applied (a settlement): keeps the last read value current.
    pub fn applied(&mut self, cell: &Cell, delta: i64) {
        if let Some(r) = self.reads.get_mut(cell) {
            r.value = r.value.saturating_add(delta);
        }
    }

    /// Counts an amount locally (journaled, not in Redis yet).
    pub fn count(&mut self, cell: &Cell, delta: i64) {
        if delta == 0 {
            return;
        }
        let p = self.pending.entry(cell.clone()).or_insert(0);
        *p = p.saturating_add(delta);
        if *p == 0 {
            self.pending.remove(cell);
        }
    }

    /// A journaled amount reached Redis: it moves from counted-since to the read value.
    pub fn replayed(&mut self, cell: &Cell, delta: i64) {
        self.count(cell, -delta);
        self.applied(cell, delta);
    }

    /// A journaled amount is dropped without reaching Redis.
    pub fn forget(&mut self, cell: &Cell, delta: i64) {
        self.count(cell, -delta);
    }

    /// The admission rule of `reserve.lua`, on the local view; when admitted, every amount
    /// is counted locally. `before` values include what was counted locally.
    pub fn reserve(&mut self, ops: &[FenceOp<'_>]) -> ReserveOutcome {
        let mut before = Vec::with_capacity(ops.len());
        for (index, op) in ops.iter().enumerate() {
            let current = self.value(op.cell);
            if let Some(max) = op.max {
                if op.amount > 0 && current >= max {
                    return ReserveOutcome::Refused { index, current };
                }
            }
            before.push(current);
        }
        for op in ops {
            self.count(op.cell, op.amount);
            if op.max.is_some() && !self.reads.contains_key(op.cell) {
                // Remember the counter so its window's end is known even before Redis is read.
                self.observe(op.cell, 0, op.expires);
            }
        }
        ReserveOutcome::Admitted { before }
    }

    /// Drops read values whose window is over.
    pub fn prune(&mut self, now: i64) {
        self.reads.retain(|_, r| r.expires > now);
    }

    pub fn len(&self) -> usize {
        self.reads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reads.is_empty()
    }

    /// Makes room at the bound: the counters whose windows end first go.
    fn evict(&mut self) {
        let mut by_expiry: Vec<i64> = self.reads.values().map(|r| r.expires).collect();
        let quarter = by_expiry.len() / 4;
        by_expiry.select_nth_unstable(quarter);
        let cutoff = by_expiry[quarter];
        self.reads.retain(|_, r| r.expires > cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(f: &str) -> Cell {
        ("k".into(), f.into())
    }

    #[test]
    fn enforces_last_read_plus_counted_since() {
        let mut f = Fence::new(100);
        let cost = cell("cost");
        f.observe(&cost, 60, i64::MAX);
        let op = |amount| FenceOp {
            cell: &cost,
            amount,
            max: Some(100),
            expires: i64::MAX,
        };
        assert_eq!(f.reserve(&[op(30)]), ReserveOutcome::Admitted { before: vec![60] });
        assert_eq!(f.reserve(&[op(30)]), ReserveOutcome::Admitted { before: vec![90] });
        assert_eq!(f.reserve(&[op(30)]), ReserveOutcome::Refused { index: 0, current: 120 });
        assert_eq!(
            f.reserve(&[op(0)]),
            ReserveOutcome::Admitted { before: vec![120] },
            "a zero amount is never refused"
        );
        assert_eq!(f.pending(&cost), 60);
        // The replay moves the local amounts into the read value.
        f.replayed(&cost, 60);
        assert_eq!(f.pending(&cost), 0);
        assert_eq!(f.value(&cost), 120);
        // A fresh read replaces it.
        f.observe(&cost, 10, i64::MAX);
        assert_eq!(f.value(&cost), 10);
    }

    #[test]
    fn unknown_counters_start_from_what_was_counted() {
        let mut f = Fence::new(100);
        let c = cell("requests");
        let op = FenceOp {
            cell: &c,
            amount: 1,
            max: Some(2),
            expires: i64::MAX,
        };
        assert!(matches!(f.reserve(std::slice::from_ref(&op)), ReserveOutcome::Admitted { .. }));
        assert!(matches!(f.reserve(std::slice::from_ref(&op)), ReserveOutcome::Admitted { .. }));
        assert_eq!(f.reserve(std::slice::from_ref(&op)), ReserveOutcome::Refused { index: 0, current: 2 });
    }

    #[test]
    fn prunes_and_stays_bounded() {
        let mut f = Fence::new(16);
        for i in 0..100 {
            f.observe(&cell(&i.to_string()), 1, i);
        }
        assert!(f.len() <= 16);
        f.prune(1_000);
        assert!(f.is_empty());
    }
}
