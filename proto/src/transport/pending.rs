//! The TLS handshakes in flight on the coordinator's listener, per peer address, and which of them
//! gives way when a newcomer arrives at a cap. A plain structure owned by the accept loop
//! (`accept.rs`), so the policy is tested without sockets.
//!
//! The policy: a newcomer is always admitted. When its address already has `per_address` handshakes in
//! flight, that address's oldest handshake that has sent nothing yet is dropped (an idle socket: a
//! real client sends its ClientHello as soon as it connects), or its oldest one if all have sent
//! something. When the whole listener has `total`, the same happens at the busiest address, so a
//! flood from one address displaces its own sockets and not other callers' handshakes.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

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
}

impl<T> Pending<T> {
    pub fn new(caps: Caps) -> Self {
        Self {
            caps: Caps {
                per_address: caps.per_address.max(1),
                total: caps.total.max(1),
            },
            next_id: 0,
            by_address: HashMap::new(),
            address_of: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.address_of.len()
    }

    /// How many handshakes from `address` are in flight.
    pub fn at(&self, address: IpAddr) -> usize {
        self.by_address.get(&address).map_or(0, BTreeMap::len)
    }

    /// Admits a handshake from `address`, first making room under the caps. Returns its id and the
    /// tokens of the handshakes that give way for it (none, one, or two: one for the address cap, one for the total).
    pub fn admit(&mut self, address: IpAddr, token: T) -> (u64, Vec<T>) {
        let mut evicted = Vec::new();
        if self.at(address) >= self.caps.per_address {
            evicted.extend(self.evict_at(address));
        }
        if self.len() >= self.caps.total {
            evicted.extend(self.evict_one());
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
        (id, evicted)
    }

    /// The peer of handshake `id` has sent its first bytes.
    pub fn started(&mut self, id: u64) {
        if let Some(address) = self.address_of.get(&id)
            && let Some(entry) = self
                .by_address
                .get_mut(address)
                .and_then(|entries| entries.get_mut(&id))
        {
            entry.started = true;
        }
    }

    /// Handshake `id` ended (established, refused, timed out); false if it had already given way.
    pub fn finish(&mut self, id: u64) -> bool {
        let Some(address) = self.address_of.remove(&id) else {
            return false;
        };
        if let Some(entries) = self.by_address.get_mut(&address) {
            entries.remove(&id);
            if entries.is_empty() {
                self.by_address.remove(&address);
            }
        }
        true
    }

    /// Makes room for one: the oldest idle (else oldest) handshake of the address with the most.
    pub fn evict_one(&mut self) -> Option<T> {
        let busiest = self
            .by_address
            .iter()
            .max_by_key(|(_, entries)| entries.len())
            .map(|(address, _)| *address)?;
        self.evict_at(busiest)
    }

    fn evict_at(&mut self, address: IpAddr) -> Option<T> {
        let entries = self.by_address.get_mut(&address)?;
        let id = entries
            .iter()
            .find(|(_, entry)| !entry.started)
            .or_else(|| entries.iter().next())
            .map(|(id, _)| *id)?;
        let entry = entries.remove(&id)?;
        if entries.is_empty() {
            self.by_address.remove(&address);
        }
        self.address_of.remove(&id);
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
        let (first, _) = p.admit(LOCAL, "idle 1");
        let (second, _) = p.admit(LOCAL, "idle 2");
        let (third, _) = p.admit(LOCAL, "idle 3");
        p.started(first);
        // The oldest has sent its ClientHello: the oldest idle one goes instead.
        let (_, evicted) = p.admit(LOCAL, "caller");
        assert_eq!(evicted, ["idle 2"]);
        assert_eq!(p.at(LOCAL), 3);
        assert!(!p.finish(second), "it already gave way");
        assert!(p.finish(third));
        assert!(p.finish(first));
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn when_every_handshake_has_started_the_oldest_gives_way() {
        let mut p = pending(2, 100);
        let (a, _) = p.admit(LOCAL, "a");
        let (b, _) = p.admit(LOCAL, "b");
        p.started(b);
        p.started(a);
        let (_, evicted) = p.admit(LOCAL, "c");
        assert_eq!(evicted, ["a"]);
    }

    #[test]
    fn other_addresses_are_not_touched_by_one_address_s_flood() {
        let mut p = pending(4, 6);
        p.admit(OTHER, "caller");
        for i in 0..100 {
            let (_, evicted) = p.admit(LOCAL, "flood");
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
            p.admit(LOCAL, "busy");
        }
        p.admit(OTHER, "other 1");
        p.admit(OTHER, "other 2");
        let third = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 8));
        let (_, evicted) = p.admit(third, "newcomer");
        assert_eq!(evicted, ["busy"]);
        assert_eq!(p.len(), 5);
    }

    #[test]
    fn evicting_from_nothing_is_nothing() {
        let mut p = pending(1, 1);
        assert!(p.evict_one().is_none());
        let (id, evicted) = p.admit(LOCAL, "only");
        assert!(evicted.is_empty());
        assert_eq!(p.evict_one(), Some("only"));
        assert!(!p.finish(id));
        assert_eq!(p.len(), 0);
    }
}
