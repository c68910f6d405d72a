//! The ledger's backends: the embedded store (counters in memory, everything durable in a
//! SQLite database) and the Redis store. Both implement [`crate::quota::ledger::Store`]. The
//! run-time control data (overrides, grants, resets, audit) has its own backends of
//! [`crate::quota::control::ControlStore`]: `control_memory` and `redis::control`.

pub mod control_memory;
pub mod embedded;
pub mod redis;
pub mod snapshot;
pub mod timed;
