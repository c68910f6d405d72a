//! The ledger's backends: the embedded store (counters in memory, everything durable in a
//! SQLite database) and the Redis store. Both implement [`crate::quota::ledger::Store`].

pub mod embedded;
pub mod redis;
pub mod snapshot;
pub mod timed;
