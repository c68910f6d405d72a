//! The upstream side, shared by the whole process: each configured provider mount
//! ([`route`]: prefix, upstream URL, provider module), the pooled HTTPS client that reaches
//! them ([`client`]) with its trust anchors ([`tls`]) and egress path through an HTTP proxy
//! ([`egress`]), and the key injected in place of the client's ([`credentials`]).

pub mod client;
pub mod credentials;
pub mod egress;
pub mod route;
pub mod tls;
