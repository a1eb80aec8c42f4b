//! The TLS handshakes in flight on the coordinator's listener, per peer address, and which of them
//! gives way when a newcomer arrives at a cap. A plain structure owned by the accept loop
//! (`accept.rs`), so the policy is tested without sockets.
//!
//! The policy: only a socket that has sent nothing yet gives way (an idle socket: a real client sends
//! its ClientHello as soon as it connects; "sent" means its whole first record arrived,
//! `accept.rs`); a handshake under way is never cut off for a newcomer, or
//! an attach storm (thousands of agents reconnecting to a busy coordinator) would cut each handshake
//! off before it finished, and none would. When the newcomer's address already has `per_address`
//! handshakes in flight, that address's oldest idle socket gives way, or, when it has none, the
//! newcomer is closed (its client retries). When the whole listener has `total`, the busiest address's
//! oldest idle socket gives way; when none is idle the accept loop stops accepting until a handshake
//! ends ([`Pending::can_admit`]), and the kernel's backlog holds the newcomers meanwhile. So a flood
//! of idle sockets from one address displaces only its own sockets, never a caller's handshake.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// The source a peer address counts under: itself for IPv4; its /64 for IPv6, where one host
/// commonly has a whole /64 to pick addresses from.
fn source(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
    }
}

/// How many handshakes may be in flight from one address, and in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caps {
    pub per_address: usize,
    pub total: usize,
}

#[derive(Debug)]
struct Entry<T> {
    /// The peer has sent its first bytes (the start of a ClientHello).
    started: bool,
    token: T,
}

/// Handshakes in flight by address; ids grow with arrival, so the smallest id is the oldest.
#[derive(Debug)]
pub(crate) struct Pending<T> {
    caps: Caps,
    next_id: u64,
    by_address: HashMap<IpAddr, BTreeMap<u64, Entry<T>>>,
    address_of: HashMap<u64, IpAddr>,
    /// How many of them have sent nothing yet.
    idle: usize,
}

impl<T> Pending<T> {
    pub(super) fn new(caps: Caps) -> Self {
        Self {
            caps: Caps {
                per_address: caps.per_address.max(1),
                total: caps.total.max(1),
            },
            next_id: 0,
            by_address: HashMap::new(),
            address_of: HashMap::new(),
            idle: 0,
        }
    }

    /// Whether a newcomer can be admitted: there is room, or an idle socket to give way.
    pub(super) fn can_admit(&self) -> bool {
        self.len() < self.caps.total || self.idle > 0
    }

    pub(super) fn len(&self) -> usize {
        self.address_of.len()
    }

    /// How many handshakes from `address` are in flight.
    pub(super) fn at(&self, address: IpAddr) -> usize {
        self.by_address
            .get(&source(address))
            .map_or(0, BTreeMap::len)
    }

    /// Admits a handshake from `address`, first making room under the caps. Returns its id and the
    /// tokens of the idle sockets that give way for it (none, one, or two: one for the address cap,
    /// one for the total), or the newcomer's own token when nothing can give way for it.
    pub(super) fn admit(&mut self, address: IpAddr, token: T) -> Result<(u64, Vec<T>), T> {
        let address = source(address);
        let mut evicted = Vec::new();
        if self.at(address) >= self.caps.per_address {
            match self.evict_at(address) {
                Some(idle) => evicted.push(idle),
                None => return Err(token),
            }
        }
        if self.len() >= self.caps.total {
            match self.evict_one() {
                Some(idle) => evicted.push(idle),
                None => return Err(token),
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.by_address.entry(address).or_default().insert(
            id,
            Entry {
                started: false,
                token,
            },
        );
        self.address_of.insert(id, address);
        self.idle += 1;
        Ok((id, evicted))
    }

    /// The peer of handshake `id` has sent its first bytes.
    pub(super) fn started(&mut self, id: u64) {
        if let Some(address) = self.address_of.get(&id)
            && let Some(entry) = self
                .by_address
                .get_mut(address)
                .and_then(|entries| entries.get_mut(&id))
            && !entry.started
        {
            entry.started = true;
            self.idle -= 1;
        }
    }

    /// Handshake `id` ended (established, refused, timed out); false if it had already given way.
    pub(super) fn finish(&mut self, id: u64) -> bool {
        let Some(address) = self.address_of.remove(&id) else {
            return false;
        };
        if let Some(entries) = self.by_address.get_mut(&address) {
            if entries.remove(&id).is_some_and(|e| !e.started) {
                self.idle -= 1;
            }
            if entries.is_empty() {
                self.by_address.remove(&address);
            }
        }
        true
    }

    /// Makes room for one: the oldest idle socket of the busiest address that has one.
    pub(super) fn evict_one(&mut self) -> Option<T> {
        if self.idle == 0 {
            return None;
        }
        let busiest = self
            .by_address
            .iter()
            .filter(|(_, entries)| entries.values().any(|e| !e.started))
            .max_by_key(|(_, entries)| entries.len())
            .map(|(address, _)| *address)?;
        self.evict_at(busiest)
    }

    /// The oldest idle socket of `address`, removed.
    fn evict_at(&mut self, address: IpAddr) -> Option<T> {
        let entries = self.by_address.get_mut(&address)?;
        let id = entries
            .iter()
            .find(|(_, entry)| !entry.started)
            .map(|(id, _)| *id)?;
        let entry = entries.remove(&id)?;
        if entries.is_empty() {
            self.by_address.remove(&address);
        }
        self.address_of.remove(&id);
        self.idle -= 1;
        Some(entry.token)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7));

    fn pending(per_address: usize, total: usize) -> Pending<&'static str> {
        Pending::new(Caps { per_address, total })
    }

    #[test]
    fn a_newcomer_at_the_address_cap_displaces_that_address_s_oldest_idle_socket() {
        let mut p = pending(3, 100);
        let (first, _) = p.admit(LOCAL, "idle 1").unwrap();
        let (second, _) = p.admit(LOCAL, "idle 2").unwrap();
        let (third, _) = p.admit(LOCAL, "idle 3").unwrap();
        p.started(first);
        // The oldest has sent its ClientHello: the oldest idle one goes instead.
        let (_, evicted) = p.admit(LOCAL, "caller").unwrap();
        assert_eq!(evicted, ["idle 2"]);
        assert_eq!(p.at(LOCAL), 3);
        assert!(!p.finish(second), "it already gave way");
        assert!(p.finish(third));
        assert!(p.finish(first));
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn an_ipv6_host_s_addresses_count_as_one_source() {
        let mut p = pending(2, 100);
        let host =
            |last: u16| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last));
        let (a, _) = p.admit(host(1), "a").unwrap();
        let (b, _) = p.admit(host(2), "b").unwrap();
        p.started(a);
        p.started(b);
        assert_eq!(p.admit(host(3), "c").unwrap_err(), "c");
        let elsewhere = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1));
        assert!(p.admit(elsewhere, "d").is_ok());
    }

    #[test]
    fn a_handshake_under_way_never_gives_way() {
        // At the address cap: the newcomer is closed instead.
        let mut p = pending(2, 100);
        let (a, _) = p.admit(LOCAL, "a").unwrap();
        let (b, _) = p.admit(LOCAL, "b").unwrap();
        p.started(b);
        p.started(a);
        assert_eq!(p.admit(LOCAL, "c").unwrap_err(), "c");
        assert_eq!(p.at(LOCAL), 2);
        // At the total cap: the loop stops accepting until one ends.
        let mut p = pending(10, 2);
        let (a, _) = p.admit(LOCAL, "a").unwrap();
        let (b, _) = p.admit(OTHER, "b").unwrap();
        assert!(p.can_admit(), "idle sockets can give way");
        p.started(a);
        p.started(b);
        assert!(!p.can_admit());
        assert!(p.evict_one().is_none());
        assert!(p.finish(a));
        assert!(p.can_admit());
    }

    #[test]
    fn other_addresses_are_not_touched_by_one_address_s_flood() {
        let mut p = pending(4, 6);
        p.admit(OTHER, "caller").unwrap();
        for i in 0..100 {
            let (_, evicted) = p.admit(LOCAL, "flood").unwrap();
            assert!(
                evicted.iter().all(|e| *e == "flood"),
                "socket {i}: {evicted:?}"
            );
        }
        assert_eq!((p.at(LOCAL), p.at(OTHER)), (4, 1));
    }

    #[test]
    fn at_the_total_cap_the_busiest_address_gives_way() {
        let mut p = pending(3, 5);
        for _ in 0..3 {
            p.admit(LOCAL, "busy").unwrap();
        }
        p.admit(OTHER, "other 1").unwrap();
        p.admit(OTHER, "other 2").unwrap();
        let third = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 8));
        let (_, evicted) = p.admit(third, "newcomer").unwrap();
        assert_eq!(evicted, ["busy"]);
        assert_eq!(p.len(), 5);
    }

    #[test]
    fn evicting_from_nothing_is_nothing() {
        let mut p = pending(1, 1);
        assert!(p.evict_one().is_none());
        let (id, evicted) = p.admit(LOCAL, "only").unwrap();
        assert!(evicted.is_empty());
        assert_eq!(p.evict_one(), Some("only"));
        assert!(!p.finish(id));
        assert_eq!(p.len(), 0);
    }
}
