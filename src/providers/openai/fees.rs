//! What a call costs beyond its tokens: the priority tier's premium and the Responses API's
//! built-in tool fees.
//!
//! - `service_tier: "priority"` is billed at priority rates, about twice the standard ones for
//!   the gpt-5 family (1.7x to 2x across models): the premium is 1000 permille (2x). The tier
//!   the response reports wins over the one requested; flex and batch discounts are ignored.
//! - Web search and file search are billed per call: each `web_search_call` and
//!   `file_search_call` item of the response's `output` is one call. Code interpreter is billed
//!   per container: a request enabling the tool with `container: {"type": "auto"}` starts one
//!   even when no call is made, so one is always charged, and every further container the
//!   output names (`container_id`) adds one. Containers are priced per 1 GB session: a
//!   `memory_limit` of 4g counts 4 (the published rates are proportional: $0.03 per 1 GB).
//! - The reservation counts `max_tool_calls` calls (at most [`MAX_RESERVED_CALLS`]), or
//!   [`RESERVED_CALLS`] without it, for each per-call tool enabled.
//! - A tool whose fee is not in the response (image generation, hosted shells, anything new)
//!   is refused.

use serde_json::Value;

use super::super::{Refusal, Usage};
use crate::wire::strict_json::{opt_str, opt_u64};

/// The priority tier's premium, in permille above list price.
pub(super) const PRIORITY_PREMIUM: u64 = 1000;
/// Per-call tool calls reserved when the request sets no `max_tool_calls`.
pub(super) const RESERVED_CALLS: u64 = 8;
/// Most per-call tool calls reserved.
pub(super) const MAX_RESERVED_CALLS: u64 = 64;
/// Container size counted when the request does not say (the largest, 64 GB).
const UNKNOWN_CONTAINER_GB: u64 = 64;

/// The premium of a service tier.
pub(super) fn tier_premium(tier: Option<&str>) -> u64 {
    if tier == Some("priority") {
        PRIORITY_PREMIUM
    } else {
        0
    }
}

/// The request's tier premium.
pub(super) fn requested_premium(json: &Value) -> Result<u64, Refusal> {
    Ok(tier_premium(opt_str(json, "service_tier")?))
}

/// Adds the reservation for the request's built-in tools; refuses tools it cannot charge.
pub(super) fn reserve_tools(json: &Value, usage: &mut Usage) -> Result<(), Refusal> {
    let calls = opt_u64(json, "max_tool_calls")?.unwrap_or(RESERVED_CALLS).min(MAX_RESERVED_CALLS);
    let tools = match json.get("tools") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(t)) => t,
        Some(_) => return Err(Refusal::InvalidBody("the member \"tools\" must be an array".into())),
    };
    for tool in tools {
        let kind = opt_str(tool, "type")?.unwrap_or("");
        match kind {
            "function" | "custom" | "mcp" | "computer_use_preview" | "computer" | "local_shell" | "apply_patch" => {}
            "shell" if is_local_shell(tool)? => {}
            "file_search" => usage.file_searches = usage.file_searches.max(calls),
            "code_interpreter" => usage.code_sessions = usage.code_sessions.max(container_gb(tool)?),
            k if k.starts_with("web_search") => usage.web_searches = usage.web_searches.max(calls),
            k => {
                return Err(Refusal::NotMetered(format!(
                    "the tool {:?} has a fee the proxy cannot read from the response",
                    crate::wire::strict_json::Printable(k)
                )))
            }
        }
    }
    Ok(())
}

/// A `shell` tool the client runs itself (no hosted environment).
fn is_local_shell(tool: &Value) -> Result<bool, Refusal> {
    Ok(match tool.get("environment") {
        None | Some(Value::Null) => true,
        Some(env) => opt_str(env, "type")? == Some("local"),
    })
}

/// The GB of a code interpreter tool's container: a container id names one started earlier
/// (counted at the largest size, since its size is unknown here), `auto` starts one of
/// `memory_limit` (1g by default).
fn container_gb(tool: &Value) -> Result<u64, Refusal> {
    match tool.get("container") {
        Some(c @ Value::Object(_)) => match opt_str(c, "memory_limit")?.unwrap_or("1g") {
            "1g" => Ok(1),
            "4g" => Ok(4),
            "16g" => Ok(16),
            "64g" => Ok(64),
            m => Err(Refusal::NotMetered(format!(
                "a code interpreter container of {:?} is not priced",
                crate::wire::strict_json::Printable(m)
            ))),
        },
        _ => Ok(UNKNOWN_CONTAINER_GB),
    }
}

/// What a response says beyond its usage: its tier and the built-in tool calls of its output.
#[derive(Debug, Default, Clone)]
pub(super) struct Extras {
    pub tier: Option<String>,
    pub web_searches: u64,
    pub file_searches: u64,
    /// Distinct containers named by code interpreter calls (a few at most; bounded).
    pub containers: Vec<String>,
}

/// Containers remembered per response.
const MAX_CONTAINERS: usize = 64;

impl Extras {
    /// One output item, by its `type` and `container_id`.
    pub fn item(&mut self, kind: &str, container: Option<&str>) {
        match kind {
            "web_search_call" => self.web_searches += 1,
            "file_search_call" => self.file_searches += 1,
            "code_interpreter_call" => {
                let id = container.unwrap_or("").to_string();
                if !self.containers.contains(&id) && self.containers.len() < MAX_CONTAINERS {
                    self.containers.push(id);
                }
            }
            _ => {}
        }
    }

    /// The fees on top of reported tokens. `tools` is false for endpoints whose tool fees are
    /// fixed by the request (chat's web search): the estimate's counts stand.
    pub fn apply(&self, usage: &mut Usage, estimate: &Usage, tools: bool) {
        usage.premium_permille = self.tier.as_deref().map_or(estimate.premium_permille, |t| tier_premium(Some(t)));
        if !tools {
            usage.web_searches = estimate.web_searches;
            return;
        }
        usage.web_searches = self.web_searches;
        usage.file_searches = self.file_searches;
        let gb = if estimate.code_sessions > 0 {
            estimate.code_sessions
        } else {
            UNKNOWN_CONTAINER_GB
        };
        let started = u64::from(estimate.code_sessions > 0);
        usage.code_sessions = gb * (self.containers.len() as u64).max(started);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reserved(body: Value) -> Result<Usage, Refusal> {
        let mut u = Usage::default();
        reserve_tools(&body, &mut u).map(|()| u)
    }

    #[test]
    fn reservation_per_tool() {
        let u = reserved(json!({"tools": [{"type": "web_search"}, {"type": "file_search"}, {"type": "function", "name": "f"}]})).unwrap();
        assert_eq!((u.web_searches, u.file_searches, u.code_sessions), (8, 8, 0));
        let u = reserved(json!({"max_tool_calls": 3, "tools": [{"type": "web_search_preview"}]})).unwrap();
        assert_eq!(u.web_searches, 3);
        let u = reserved(json!({"max_tool_calls": 5000, "tools": [{"type": "file_search"}]})).unwrap();
        assert_eq!(u.file_searches, 64);
        let u = reserved(json!({"tools": [{"type": "code_interpreter", "container": {"type": "auto", "memory_limit": "4g"}}]})).unwrap();
        assert_eq!(u.code_sessions, 4);
        let u = reserved(json!({"tools": [{"type": "code_interpreter", "container": "cntr_1"}]})).unwrap();
        assert_eq!(u.code_sessions, 64);
        assert_eq!(reserved(json!({})).unwrap(), Usage::default());
    }

    #[test]
    fn tools_without_a_readable_fee_are_refused() {
        for body in [
            json!({"tools": [{"type": "image_generation"}]}),
            json!({"tools": [{"type": "shell", "environment": {"type": "container_auto"}}]}),
            json!({"tools": [{"type": "code_interpreter", "container": {"type": "auto", "memory_limit": "2g"}}]}),
            json!({"tools": [{"type": "brand_new_tool"}]}),
        ] {
            assert!(matches!(reserved(body.clone()), Err(Refusal::NotMetered(_))), "{body}");
        }
        assert!(matches!(reserved(json!({"tools": {"type": "web_search"}})), Err(Refusal::InvalidBody(_))));
        assert!(matches!(reserved(json!({"max_tool_calls": "3"})), Err(Refusal::InvalidBody(_))));
        assert!(reserved(json!({"tools": [{"type": "shell", "environment": {"type": "local"}}]})).is_ok());
    }

    #[test]
    fn fees_follow_the_response() {
        let estimate = Usage {
            web_searches: 8,
            code_sessions: 4,
            premium_permille: PRIORITY_PREMIUM,
            ..Usage::default()
        };
        let mut x = Extras::default();
        for (kind, c) in [
            ("web_search_call", None),
            ("web_search_call", None),
            ("message", None),
            ("code_interpreter_call", Some("cntr_a")),
            ("code_interpreter_call", Some("cntr_a")),
            ("code_interpreter_call", Some("cntr_b")),
            ("file_search_call", None),
        ] {
            x.item(kind, c);
        }
        let mut u = Usage::default();
        x.apply(&mut u, &estimate, true);
        assert_eq!((u.web_searches, u.file_searches, u.code_sessions, u.premium_permille), (2, 1, 8, 1000));
        // The tier reported wins; a container started without a call is still charged.
        let x = Extras {
            tier: Some("default".into()),
            ..Extras::default()
        };
        x.apply(&mut u, &estimate, true);
        assert_eq!((u.web_searches, u.code_sessions, u.premium_permille), (0, 4, 0));
        // Chat: the request's fixed search stands.
        let mut u = Usage::default();
        Extras::default().apply(
            &mut u,
            &Usage {
                web_searches: 1,
                ..Usage::default()
            },
            false,
        );
        assert_eq!(u.web_searches, 1);
    }
}
