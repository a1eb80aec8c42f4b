//! ESSO versions, compared as numbers (SPEC §5 invariant 6; ESSO.md: "compare them as numbers, never
//! as strings"). One type for the inventory's `target_version`, the agents' facts, the plan and verify.
//!
//! A version is one to four dot-separated whole numbers; missing parts are zero, so `3.0.7` and
//! `3.0.7.0` are the same version, and `3.0.10` is newer than `3.0.9`. Real ESSO versions are four-part
//! builds read from the registry (`9.0.1865.0`, KB 2908466).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// A numeric version of up to four parts. Equality and order ignore trailing zero parts; `Display`
/// shows the version as it was written.
#[derive(Debug, Clone)]
pub struct Version {
    parts: [u64; 4],
    written: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a version: write up to four whole numbers separated by dots, e.g. \"3.0.7\" or \"9.0.1865.0\""
)]
pub struct VersionError(pub String);

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let fail = || VersionError(s.to_string());
        let mut parts = [0u64; 4];
        for (i, part) in text.split('.').enumerate() {
            let slot = parts.get_mut(i).ok_or_else(fail)?;
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(fail());
            }
            *slot = part.parse().map_err(|_| fail())?;
        }
        Ok(Self {
            parts,
            written: text.to_string(),
        })
    }
}

impl Version {
    /// The four parts, missing ones as zero.
    pub fn parts(&self) -> [u64; 4] {
        self.parts
    }

    /// How `found` stands against this version as a target.
    pub fn compare(&self, found: &Version) -> Standing {
        match found.cmp(self) {
            Ordering::Less => Standing::Older,
            Ordering::Equal => Standing::Current,
            Ordering::Greater => Standing::Newer,
        }
    }
}

/// Where a node's version stands against the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Below the target: the node is upgraded.
    Older,
    /// The target (`already-current`).
    Current,
    /// Above the target (`newer`): never installed on, never downgraded.
    Newer,
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.parts == other.parts
    }
}

impl Eq for Version {}

impl std::hash::Hash for Version {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.parts.hash(state);
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.parts.cmp(&other.parts)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.written)
    }
}

impl<'de> serde::Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn versions_compare_as_numbers() {
        assert_eq!(v("3.0.7"), v("3.0.7.0"));
        assert_eq!(v(" 3.0.7 "), v("3.0.7"));
        assert!(v("3.0.10") > v("3.0.9"));
        assert!(v("9.0.2096.0") > v("9.0.1865.0"));
        assert!(v("3.0.8") > v("3.0.7"));
        assert!(v("10") > v("9.9.9.9"));
        assert_eq!(v("3.0.7.0").to_string(), "3.0.7.0");
        let target = v("3.0.7");
        assert_eq!(target.compare(&v("3.0.6")), Standing::Older);
        assert_eq!(target.compare(&v("3.0.7.0")), Standing::Current);
        assert_eq!(target.compare(&v("3.0.8")), Standing::Newer);
        assert_eq!(v("3.0.7").parts(), [3, 0, 7, 0]);
    }

    #[test]
    fn what_is_not_a_version() {
        for bad in [
            "",
            "3.",
            ".3",
            "3..7",
            "3.0.7.0.1",
            "v3",
            "3.0.7-beta",
            "3,0",
            "-1",
            "1.+2",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "3.x".parse::<Version>().unwrap_err().to_string(),
            "\"3.x\" is not a version: write up to four whole numbers separated by dots, e.g. \"3.0.7\" or \"9.0.1865.0\""
        );
        // A part too large for 64 bits is refused, not wrapped.
        assert!("99999999999999999999".parse::<Version>().is_err());
    }

    #[test]
    fn serde_keeps_the_written_form() {
        let json = serde_json::to_string(&v("3.0.7.0")).unwrap();
        assert_eq!(json, "\"3.0.7.0\"");
        let back: Version = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_string(), "3.0.7.0");
        assert!(serde_json::from_str::<Version>("\"x\"").is_err());
    }
}
