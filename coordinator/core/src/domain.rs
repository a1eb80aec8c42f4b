//! Domain newtypes shared by the coordinator's layers. The wire (proto) and storage convert into these
//! at their boundaries, so nothing downstream re-checks raw strings.

use std::fmt;

use crate::text::quote;

/// A node (SSO server) name: case-insensitive like a Windows host name, kept in lower case.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(String);

impl NodeName {
    /// Checks the characters (letters, digits, `-`, `_`, `.`) and the length (a DNS name's, 253) and
    /// folds to lower case.
    pub fn new(raw: &str) -> Result<Self, String> {
        if crate::names::valid_name(raw) {
            Ok(Self(raw.to_ascii_lowercase()))
        } else {
            Err(format!(
                "{} is not a valid node name (letters, digits, '-', '_' and '.', starting with a letter or digit, at most 253 bytes)",
                quote(raw)
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first DNS label: `sso-dev-01.corp.example` → `sso-dev-01`.
    pub fn short(&self) -> &str {
        self.0.split('.').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An environment name (one SSO system), as written in the inventory.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct EnvName(String);

impl EnvName {
    /// The same characters and length as a node name; the case is kept.
    pub fn new(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("the environment name is empty".into());
        }
        if crate::names::valid_name(raw) {
            Ok(Self(raw.to_string()))
        } else {
            Err(format!(
                "{} is not a valid environment name (letters, digits, '-', '_' and '.', starting with a letter or digit, at most 253 bytes)",
                quote(raw)
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EnvName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a node is its environment's master secret server or a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Master,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Member => "member",
        }
    }
}

/// A run id: the coordinator makes UUIDs (36 bytes).
pub const MAX_RUN_ID: usize = 64;

/// A run's id, as the coordinator made it (a UUID) and an operator names it: letters, digits and
/// '-', at most [`MAX_RUN_ID`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(String);

impl RunId {
    pub fn new(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("no run id".into());
        }
        let ok =
            raw.len() <= MAX_RUN_ID && raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if ok {
            Ok(Self(raw.to_string()))
        } else {
            Err(format!(
                "{} is not a run id (letters, digits and '-', at most {MAX_RUN_ID} bytes; `fleetctl runs` lists them)",
                quote(raw)
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<RunId> for String {
    fn from(id: RunId) -> String {
        id.0
    }
}

/// An attempt's id: a UUID the coordinator made when it dispatched the attempt, which the attempt's
/// agent echoes in everything it says of it. Opaque: compared, stored and shown, never parsed. (The
/// gRPC layer bounds the length of one an agent sends.)
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptId(String);

impl AttemptId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for AttemptId {
    fn from(id: String) -> Self {
        Self(id)
    }
}

impl From<&str> for AttemptId {
    fn from(id: &str) -> Self {
        Self(id.to_string())
    }
}

impl From<AttemptId> for String {
    fn from(id: AttemptId) -> String {
        id.0
    }
}

impl fmt::Display for AttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How an attempt ended, as stored with it (`attempts.outcome`, the payload of its `finished` event)
/// and shown in its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The agent reported no outcome (an agent that sends none is broken).
    Unreported,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

impl AttemptOutcome {
    /// Every outcome, for the names' round trip.
    pub const ALL: [AttemptOutcome; 5] = [
        AttemptOutcome::Unreported,
        AttemptOutcome::Succeeded,
        AttemptOutcome::Failed,
        AttemptOutcome::TimedOut,
        AttemptOutcome::Cancelled,
    ];

    /// The stored name. These spellings are in existing databases: never change one.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Unreported => "Unspecified",
            AttemptOutcome::Succeeded => "Succeeded",
            AttemptOutcome::Failed => "Failed",
            AttemptOutcome::TimedOut => "TimedOut",
            AttemptOutcome::Cancelled => "Cancelled",
        }
    }

    /// A stored name ([`Self::as_str`]) back; `None` for one this build does not know.
    pub fn parse(stored: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == stored)
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for NodeName {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        Self::new(&raw)
    }
}

impl From<NodeName> for String {
    fn from(n: NodeName) -> String {
        n.0
    }
}

impl TryFrom<String> for EnvName {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        Self::new(&raw)
    }
}

impl From<EnvName> for String {
    fn from(n: EnvName) -> String {
        n.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_fold_case_and_reject_bad_characters() {
        assert_eq!(NodeName::new("SSO-Dev-01").unwrap().as_str(), "sso-dev-01");
        assert_eq!(
            NodeName::new("sso01.corp.example").unwrap().short(),
            "sso01"
        );
        assert!(NodeName::new("").is_err());
        assert!(NodeName::new("bad name").is_err());
        assert!(NodeName::new(r"corp\sso01").is_err());
    }

    #[test]
    fn environment_names() {
        assert!(EnvName::new("prod-eu").is_ok());
        assert_eq!(
            EnvName::new("").unwrap_err(),
            "the environment name is empty"
        );
        assert!(EnvName::new("a b").is_err());
    }
}
