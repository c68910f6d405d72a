//! Tenant ids: they become store keys, metric labels and history entries, so they are
//! validated once, here.

/// Longest tenant id accepted; ids become store keys and metric labels.
pub const MAX_ID_LEN: usize = 128;

/// Checks an attribution tag (`tool=script-writer`): like a tenant id, and `=` is allowed too.
pub fn validate_tag(tag: &str) -> Result<(), String> {
    validate(tag, "tag", &['='])
}

/// Checks an id: 1..=128 bytes of `[A-Za-z0-9._:@-]`.
pub fn validate_id(id: &str) -> Result<(), String> {
    validate(id, "id", &[])
}

/// 1..=128 bytes of letters, digits, `. _ : @ -` and the `extra` characters; `what` names
/// the value in the message.
fn validate(s: &str, what: &str, extra: &[char]) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if s.len() > MAX_ID_LEN {
        return Err(format!("the {what} is {} bytes long; at most {MAX_ID_LEN} are allowed", s.len()));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-') || extra.contains(&c);
    if let Some(c) = s.chars().find(|c| !allowed(*c)) {
        let extra: String = extra.iter().map(|c| format!(" {c}")).collect();
        return Err(format!("the {what} contains {c:?}; only letters, digits and . _ : @ -{extra} are allowed"));
    }
    Ok(())
}
