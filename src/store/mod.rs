//! The ledger's backends: the embedded memory store (with its snapshot file) and the Redis
//! store. Both implement [`crate::quota::ledger::Store`].

pub mod memory;
pub mod redis;
pub mod snapshot;
pub mod timed;
