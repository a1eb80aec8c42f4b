//! ssofleet's wire protocol and the mTLS plumbing every process shares.
//!
//! # Layout
//! - [`pb`]: code generated from `proto/ssofleet/v1/*.proto` (the agent and operator services).
//! - [`config`]: TOML configuration read with line and key positions for every problem.
//! - [`logging`]: the processes' tracing subscriber (text or JSON lines on standard error).
//! - [`identity`]: SPIFFE-style peer identities carried in URI SANs (`spiffe://<td>/agent/<node>`).
//! - [`tls`]: server and client rustls configurations built from PEM files, with errors that name the file.
//! - [`transport`]: the coordinator's TLS accept loop and the clients' TLS connector for tonic.
//! - [`version`]: ESSO versions, compared as numbers.
//! - [`install`]: which ESSO installs may run unattended (the planner's and the agent's one rule).
//! - [`names`]: server names as ESSO records them, and the text of a secret file.
#![forbid(unsafe_code)]

pub mod config;
pub mod identity;
pub mod install;
pub mod logging;
pub mod names;
pub mod tls;
pub mod transport;
pub mod version;

/// Milliseconds since the Unix epoch, the time unit of the wire (0 before 1970, saturating far ahead).
pub fn unix_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The version of the agent protocol this build speaks, exchanged in `Hello` and `Welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Generated protobuf and gRPC code (package `ssofleet.v1`).
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
    tonic::include_proto!("ssofleet.v1");
}
