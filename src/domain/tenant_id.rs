//! Tenant ids: they become store keys, metric labels and history entries, so they are
//! validated once, here.

/// Longest tenant id accepted; ids become store keys and metric labels.
pub const MAX_ID_LEN: usize = 128;

/// Checks an attribution tag (`tool=script-writer`): like a tenant id, and `=` is allowed too.
pub fn validate_tag(tag: &str) -> Result<(), String> {
    let without_eq = tag.replace('=', "_");
    validate_id(&without_eq).map_err(|e| e.replace("the id", "the tag").replace(": @ -", ": @ - ="))
}

/// Checks an id: 1..=128 bytes of `[A-Za-z0-9._:@-]`.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("the id is empty".into());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!("the id is {} bytes long; at most {MAX_ID_LEN} are allowed", id.len()));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-'))) {
        return Err(format!("the id contains {c:?}; only letters, digits and . _ : @ - are allowed"));
    }
    Ok(())
}
