//! What the operator API accepts from a caller, in one place: how long an identifier or a comment may
//! be, the form of run ids, step names, request ids and plan hashes, and how an error message quotes
//! what a caller sent ([`quote`], the core's: shortened, so that a refusal never sends a large input
//! back).
//!
//! Node and environment names follow the inventory's rule ([`crate::domain`]); this module only
//! applies it to what a caller sends.

pub use fleet_core::text::quote;

pub use crate::domain::MAX_RUN_ID;
use crate::domain::{EnvName, NodeName, RunId};
/// A step name, such as `backup-secret` (the longest today is 25 bytes).
pub const MAX_STEP: usize = 64;
/// An operator's comment, kept in the audit trail.
pub const MAX_COMMENT: usize = 1024;
/// A control's idempotency key: `fleetctl` sends a UUID.
pub const MAX_REQUEST_ID: usize = 128;
/// A plan's hash as `fleetctl plan` printed it.
pub const MAX_PLAN_HASH: usize = 128;
/// Events in one `Logs` page when the caller does not say, and at most.
pub const DEFAULT_LOG_EVENTS: usize = 1_000;
pub const MAX_LOG_EVENTS: usize = 10_000;

/// Free text a caller or an agent sent (a reason, an error) as a log line may hold it: at most
/// `max` characters, then how long it was.
pub fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
    }
}

/// A run id as a caller sent it, by the domain's rule ([`RunId`]).
pub fn run_id(raw: &str) -> Result<&str, String> {
    RunId::new(raw).map(|_| raw)
}

/// A node name as a caller sent it, by the inventory's rule.
pub fn node(raw: &str) -> Result<NodeName, String> {
    NodeName::new(raw)
}

/// An environment name as a caller sent it, by the inventory's rule.
pub fn environment(raw: &str) -> Result<EnvName, String> {
    EnvName::new(raw)
}

/// A step name as a caller sent it (whether the run has such a step is the run's to say).
pub fn step(raw: &str) -> Result<&str, String> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_STEP
        && raw
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(raw)
    } else {
        Err(format!(
            "{} is not a step name (such as backup-secret or upgrade: lower-case letters, digits and '-', at most {MAX_STEP} bytes)",
            quote(raw)
        ))
    }
}

/// An operator's comment for the audit trail (empty: none).
pub fn comment(raw: &str) -> Result<&str, String> {
    if raw.len() <= MAX_COMMENT {
        Ok(raw)
    } else {
        Err(format!(
            "the comment is {} bytes; the audit trail keeps at most {MAX_COMMENT}",
            raw.len()
        ))
    }
}

/// A control's request id (empty: none, the control is not deduplicated).
pub fn request_id(raw: &str) -> Result<Option<&str>, String> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.len() <= MAX_REQUEST_ID && raw.chars().all(|c| c.is_ascii_graphic()) {
        Ok(Some(raw))
    } else {
        Err(format!(
            "{} is not a request id (printable ASCII without spaces, at most {MAX_REQUEST_ID} bytes; a UUID will do)",
            quote(raw)
        ))
    }
}

/// How many events a `Logs` page may hold, for a caller's `max_events` (0: the default).
pub fn max_log_events(raw: u32) -> usize {
    match usize::try_from(raw) {
        Ok(0) => DEFAULT_LOG_EVENTS,
        Ok(n) => n.min(MAX_LOG_EVENTS),
        Err(_) => MAX_LOG_EVENTS,
    }
}

/// The plan hash a run must still have to start.
pub fn plan_hash(raw: &str) -> Result<&str, String> {
    if !raw.is_empty() && raw.len() <= MAX_PLAN_HASH && raw.chars().all(|c| c.is_ascii_graphic()) {
        Ok(raw)
    } else {
        Err(format!(
            "{} is not a plan hash (the hash `fleetctl plan` prints)",
            quote(raw)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_free_text_is_clipped_and_says_its_size() {
        assert_eq!(clip("short", 10), "short");
        let q = clip(&"x".repeat(1_000_000), 40);
        assert!(q.len() < 80 && q.ends_with("… (1000000 bytes)"), "{q}");
    }

    #[test]
    fn identifiers_are_bounded_and_refusals_do_not_echo_them() {
        let huge = "a".repeat(1 << 20);
        for refused in [
            run_id(&huge).map(drop),
            run_id("").map(drop),
            run_id("a b").map(drop),
            node(&huge).map(drop),
            node("").map(drop),
            environment(&huge).map(drop),
            step(&huge).map(drop),
            step("").map(drop),
            comment(&huge).map(drop),
            request_id(&huge).map(drop),
            request_id("a b").map(drop),
            plan_hash(&huge).map(drop),
        ] {
            let message = refused.unwrap_err();
            assert!(message.len() < 300, "{message}");
        }
        assert_eq!(run_id("3f2c-9a"), Ok("3f2c-9a"));
        assert_eq!(node("SSO-01").unwrap().as_str(), "sso-01");
        assert_eq!(step("backup-secret"), Ok("backup-secret"));
        assert_eq!(request_id(""), Ok(None));
        assert_eq!(comment(""), Ok(""));
    }
}
