//! ssofleet's wire protocol and the mTLS plumbing every process shares.
//!
//! # Layout
//! - [`pb`]: code generated from `proto/ssofleet/v1/*.proto` (the agent and operator services).
//! - [`logging`]: the processes' tracing subscriber (text or JSON lines on standard error).
//! - [`identity`]: SPIFFE-style peer identities carried in URI SANs (`spiffe://<td>/agent/<node>`).
//! - [`tls`]: server and client rustls configurations built from PEM files, with errors that name the file.
//! - [`transport`]: the coordinator's TLS accept loop and the clients' TLS connector for tonic.
//!
//! [`config`], [`version`], [`install`] and [`names`] are the pure core's ([`fleet_core`]), here under
//! their old paths for the agent and the tests.
#![forbid(unsafe_code)]

pub use fleet_core::{config, install, names, version};

pub mod identity;
pub mod logging;
pub mod tls;
pub mod transport;

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
