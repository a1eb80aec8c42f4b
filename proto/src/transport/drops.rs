//! The accept loop's account of connections it closed before their TLS handshake ended (idle, slow,
//! or displaced by a newer one), summed up per peer address: the first from an address is a line of
//! its own, the rest one line per interval, so a flood of sockets is not a flood of log lines.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::pending::Caps;

/// Why a connection was closed without a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// No whole ClientHello record (or not TLS at all) within the first-bytes deadline.
    Silent,
    /// The handshake did not finish within its deadline.
    Slow,
    /// Closed at a cap: an idle socket that gave way to a newer connection, or a newcomer from an
    /// address whose handshakes are all under way.
    Evicted,
}

/// The limits the lines quote.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quoted {
    pub first_bytes: Duration,
    pub handshake: Duration,
    pub caps: Caps,
    pub interval: Duration,
}

#[derive(Debug, Default)]
struct Counts {
    silent: u64,
    slow: u64,
    evicted: u64,
}

impl Counts {
    fn total(&self) -> u64 {
        self.silent + self.slow + self.evicted
    }
}

/// Addresses with closed connections in the current interval, and how many since the last line.
#[derive(Debug)]
pub(crate) struct DropLog {
    quoted: Quoted,
    by_address: HashMap<IpAddr, Counts>,
}

impl DropLog {
    pub(super) fn new(quoted: Quoted) -> Self {
        Self {
            quoted,
            by_address: HashMap::new(),
        }
    }

    /// Counts one closed connection; the line to log now if it is its address's first in a while.
    pub(super) fn record(&mut self, peer: SocketAddr, why: Dropped) -> Option<String> {
        let address = peer.ip();
        if let Some(counts) = self.by_address.get_mut(&address) {
            match why {
                Dropped::Silent => counts.silent += 1,
                Dropped::Slow => counts.slow += 1,
                Dropped::Evicted => counts.evicted += 1,
            }
            return None;
        }
        self.by_address.insert(address, Counts::default());
        let q = &self.quoted;
        let reason = match why {
            Dropped::Silent => format!(
                "it sent no whole TLS ClientHello within {:?}",
                q.first_bytes
            ),
            Dropped::Slow => format!("its TLS handshake did not finish within {:?}", q.handshake),
            Dropped::Evicted => format!(
                "it was closed to keep within the caps on TLS handshakes in flight ({} from one address, {} in all)",
                q.caps.per_address, q.caps.total
            ),
        };
        Some(format!(
            "closed the connection from {peer}: {reason}; more such from {address} are summed up every {:?}",
            q.interval
        ))
    }

    /// Ends an interval: one line per address that had more since its last line. An address with
    /// none in a whole interval is forgotten, so its next one has a line of its own again.
    pub(super) fn flush(&mut self) -> Vec<String> {
        let q = self.quoted;
        let mut lines = Vec::new();
        self.by_address.retain(|address, counts| {
            if counts.total() == 0 {
                return false;
            }
            let mut parts = Vec::new();
            if counts.silent > 0 {
                parts.push(format!(
                    "{} sent no whole TLS ClientHello within {:?}",
                    counts.silent, q.first_bytes
                ));
            }
            if counts.slow > 0 {
                parts.push(format!(
                    "{} did not finish the handshake within {:?}",
                    counts.slow, q.handshake
                ));
            }
            if counts.evicted > 0 {
                parts.push(format!(
                    "{} closed at the caps on handshakes in flight ({} from one address, {} in all)",
                    counts.evicted, q.caps.per_address, q.caps.total
                ));
            }
            lines.push(format!(
                "closed {} more connection(s) from {address} in the last {:?} before a TLS handshake: {}; idle or slow sockets do not delay other callers, but check what at {address} opens them",
                counts.total(),
                q.interval,
                parts.join(", ")
            ));
            *counts = Counts::default();
            true
        });
        lines.sort();
        lines
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn log() -> DropLog {
        DropLog::new(Quoted {
            first_bytes: Duration::from_secs(3),
            handshake: Duration::from_secs(10),
            caps: Caps {
                per_address: 256,
                total: 512,
            },
            interval: Duration::from_secs(30),
        })
    }

    #[test]
    fn a_flood_from_one_address_is_one_line_then_one_per_interval() {
        let mut log = log();
        let peer = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let first = log.record(peer(1), Dropped::Evicted).unwrap();
        assert!(
            first.starts_with(
                "closed the connection from 127.0.0.1:1: it was closed to keep within the caps"
            ),
            "{first}"
        );
        for port in 2..1002 {
            let why = if port % 2 == 0 {
                Dropped::Silent
            } else {
                Dropped::Evicted
            };
            assert_eq!(log.record(peer(port), why), None);
        }
        let other = log.record(SocketAddr::from(([10, 0, 0, 1], 9)), Dropped::Slow);
        assert!(other.unwrap().contains("did not finish within 10s"));

        let lines = log.flush();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("closed 1000 more connection(s) from 127.0.0.1 in the last 30s"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("500 sent no whole TLS ClientHello within 3s"));
        assert!(lines[0].contains("500 closed at the caps on handshakes in flight"));

        // Still flooding: summed up, not logged one by one.
        assert_eq!(log.record(peer(5000), Dropped::Silent), None);
        assert_eq!(log.flush().len(), 1);
        // A quiet interval: forgotten, and the next one has its own line again.
        assert!(log.flush().is_empty());
        assert!(log.record(peer(6000), Dropped::Silent).is_some());
    }
}
