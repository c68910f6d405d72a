//! spendgate: a sidecar reverse proxy that enforces spend limits on paid AI APIs.
//!
//! The request path, file by file: [`tenant`] identifies who pays, [`proxy::route`] finds the
//! provider, [`providers`] classify the call and estimate it, [`pricing`] prices it,
//! [`quota`] reserves it against the limits (or [`quota::refusal`] answers 402), and
//! [`proxy::handler`] forwards it; [`proxy::metered_body`] streams the response back while
//! the provider's extractor reads the usage, and [`proxy::settle`] records the real cost in
//! the [`store`] and the [`metrics`].

pub mod admin;
pub mod alerts;
pub mod app;
pub mod check;
pub mod config;
pub mod metrics;
pub mod money;
pub mod pricing;
pub mod providers;
pub mod proxy;
pub mod quota;
pub mod reload;
pub mod server;
pub mod store;
pub mod tenant;
pub mod usage;
pub mod window;
pub mod wire;
