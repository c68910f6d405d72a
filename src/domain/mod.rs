//! The ground floor: the words every other module shares — money in integer units, calendar
//! windows and the clock, what limits count and whose they are, tenant ids. It depends on
//! nothing else in the crate.

mod measure;
pub mod money;
pub mod tenant_id;
pub mod window;

pub use measure::{Metric, Mode, Scope};
