//! Peer identities (SPEC §3): every certificate names its holder in exactly one URI SAN,
//! `spiffe://<trust-domain>/coordinator`, `spiffe://<trust-domain>/agent/<node>` or
//! `spiffe://<trust-domain>/operator/<name>`.
//!
//! Node names are case-insensitive, like Windows host names, and are kept in lower case.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The role part of an identity, for authorization decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Coordinator,
    Agent,
    Operator,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Coordinator => "coordinator",
            Role::Agent => "agent",
            Role::Operator => "operator",
        })
    }
}

/// Who is at the other end of a connection, as its certificate says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    trust_domain: String,
    kind: IdentityKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum IdentityKind {
    Coordinator,
    Agent(String),
    Operator(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("not a spiffe:// URI: {0:?}")]
    NotSpiffe(String),
    #[error("{uri:?}: {problem}")]
    Malformed { uri: String, problem: &'static str },
    #[error("the certificate cannot be parsed: {0}")]
    BadCertificate(String),
    #[error("the certificate has no spiffe:// URI SAN naming its holder")]
    NoIdentity,
    #[error("the certificate has several spiffe:// URI SANs ({0}); exactly one is allowed")]
    SeveralIdentities(String),
}

impl PeerIdentity {
    pub fn coordinator(trust_domain: &str) -> Result<Self, IdentityError> {
        Self::build(trust_domain, IdentityKind::Coordinator)
    }

    pub fn agent(trust_domain: &str, node: &str) -> Result<Self, IdentityError> {
        let node = valid_name(node, "node name")?.to_ascii_lowercase();
        Self::build(trust_domain, IdentityKind::Agent(node))
    }

    pub fn operator(trust_domain: &str, name: &str) -> Result<Self, IdentityError> {
        let name = valid_name(name, "operator name")?.to_string();
        Self::build(trust_domain, IdentityKind::Operator(name))
    }

    fn build(trust_domain: &str, kind: IdentityKind) -> Result<Self, IdentityError> {
        let trust_domain = valid_trust_domain(trust_domain)?.to_ascii_lowercase();
        Ok(Self { trust_domain, kind })
    }

    /// Parses `spiffe://<trust-domain>/<role>[/<name>]`.
    pub fn parse_uri(uri: &str) -> Result<Self, IdentityError> {
        let malformed = |problem| IdentityError::Malformed {
            uri: uri.to_string(),
            problem,
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| IdentityError::NotSpiffe(uri.to_string()))?;
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| malformed("no path after the trust domain"))?;
        let segments: Vec<&str> = path.split('/').collect();
        let kind = match segments.as_slice() {
            ["coordinator"] => IdentityKind::Coordinator,
            ["agent", node] => {
                let node = valid_name(node, "node name").map_err(|_| malformed("bad node name"))?;
                IdentityKind::Agent(node.to_ascii_lowercase())
            }
            ["operator", name] => {
                let name = valid_name(name, "operator name")
                    .map_err(|_| malformed("bad operator name"))?;
                IdentityKind::Operator(name.to_string())
            }
            _ => {
                return Err(malformed(
                    "path must be /coordinator, /agent/<node> or /operator/<name>",
                ));
            }
        };
        valid_trust_domain(trust_domain).map_err(|_| malformed("bad trust domain"))?;
        Ok(Self {
            trust_domain: trust_domain.to_ascii_lowercase(),
            kind,
        })
    }

    /// The identity named by a DER certificate: its one spiffe:// URI SAN.
    pub fn from_certificate_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let sans = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let uris: Vec<&str> = sans
            .map(|ext| ext.value.general_names.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [] => Err(IdentityError::NoIdentity),
            [one] => Self::parse_uri(one),
            several => Err(IdentityError::SeveralIdentities(several.join(", "))),
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn role(&self) -> Role {
        match self.kind {
            IdentityKind::Coordinator => Role::Coordinator,
            IdentityKind::Agent(_) => Role::Agent,
            IdentityKind::Operator(_) => Role::Operator,
        }
    }

    /// The node name of an agent identity.
    pub fn node(&self) -> Option<&str> {
        match &self.kind {
            IdentityKind::Agent(node) => Some(node),
            _ => None,
        }
    }

    /// The operator name of an operator identity.
    pub fn operator_name(&self) -> Option<&str> {
        match &self.kind {
            IdentityKind::Operator(name) => Some(name),
            _ => None,
        }
    }

    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let td = &self.trust_domain;
        match &self.kind {
            IdentityKind::Coordinator => write!(f, "spiffe://{td}/coordinator"),
            IdentityKind::Agent(node) => write!(f, "spiffe://{td}/agent/{node}"),
            IdentityKind::Operator(name) => write!(f, "spiffe://{td}/operator/{name}"),
        }
    }
}

/// Node and operator names: letters, digits, `-`, `_` and `.`, starting with a letter or digit,
/// at most 253 characters (a DNS name's limit; Windows NetBIOS names are shorter still).
pub fn valid_name<'a>(name: &'a str, what: &'static str) -> Result<&'a str, IdentityError> {
    if fleet_core::names::valid_name(name) {
        Ok(name)
    } else {
        Err(IdentityError::Malformed {
            uri: name.to_string(),
            problem: match what {
                "node name" => {
                    "a node name uses letters, digits, '-', '_' and '.', and starts with a letter or digit"
                }
                _ => {
                    "an operator name uses letters, digits, '-', '_' and '.', and starts with a letter or digit"
                }
            },
        })
    }
}

fn valid_trust_domain(td: &str) -> Result<&str, IdentityError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(td)
    } else {
        Err(IdentityError::Malformed {
            uri: td.to_string(),
            problem: "a trust domain uses letters, digits, '-', '_' and '.'",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_role_and_round_trips() {
        for uri in [
            "spiffe://fleet.local/coordinator",
            "spiffe://fleet.local/agent/sso-dev-01",
            "spiffe://fleet.local/operator/alice",
        ] {
            let id = PeerIdentity::parse_uri(uri).expect(uri);
            assert_eq!(id.uri(), uri);
        }
        let agent = PeerIdentity::parse_uri("spiffe://Fleet.Local/agent/SSO-DEV-01").unwrap();
        assert_eq!(agent.node(), Some("sso-dev-01"));
        assert_eq!(agent.trust_domain(), "fleet.local");
        assert_eq!(agent.role(), Role::Agent);
    }

    #[test]
    fn rejects_malformed_uris() {
        for uri in [
            "https://fleet.local/coordinator",
            "spiffe://fleet.local",
            "spiffe://fleet.local/agent",
            "spiffe://fleet.local/agent/a/b",
            "spiffe://fleet.local/agent/-bad",
            "spiffe://fleet.local/admin/x",
            "spiffe:///coordinator",
        ] {
            assert!(PeerIdentity::parse_uri(uri).is_err(), "{uri} accepted");
        }
    }

    #[test]
    fn reads_the_uri_san_of_a_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://t.example/agent/node-1".try_into().unwrap(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let id = PeerIdentity::from_certificate_der(cert.der()).unwrap();
        assert_eq!(id, PeerIdentity::agent("t.example", "node-1").unwrap());

        let plain = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(
            PeerIdentity::from_certificate_der(plain.der()),
            Err(IdentityError::NoIdentity)
        );
    }
}
