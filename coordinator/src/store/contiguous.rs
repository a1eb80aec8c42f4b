//! How far an attempt's agent events are stored without a gap ([`super::Store::contiguous_seq`], what
//! may be acknowledged), kept as the events are written instead of read back from every stored event
//! at each acknowledgement.

use std::collections::BTreeSet;

/// The sequence numbers stored for one attempt, as the database holds them (an `i64` each).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Contiguous {
    /// The highest stored with every one from 1 up to it stored.
    up_to: u64,
    /// Those stored above a gap.
    above: BTreeSet<u64>,
    /// One below 1 is stored (0, or one the database holds as negative): the scan in order meets
    /// it first and acknowledges nothing, so neither does this.
    below_one: bool,
}

impl Contiguous {
    /// From the stored sequence numbers of an attempt, in any order.
    pub(super) fn of(stored: impl IntoIterator<Item = i64>) -> Self {
        let mut contiguous = Self::default();
        for seq in stored {
            contiguous.insert(seq);
        }
        contiguous
    }

    /// One more stored sequence number (one stored already changes nothing).
    pub(super) fn insert(&mut self, stored: i64) {
        let Some(seq) = u64::try_from(stored).ok().filter(|&s| s >= 1) else {
            self.below_one = true;
            return;
        };
        if seq <= self.up_to {
            return;
        }
        if seq != self.up_to + 1 {
            self.above.insert(seq);
            return;
        }
        self.up_to = seq;
        while self.above.remove(&(self.up_to + 1)) {
            self.up_to += 1;
        }
    }

    /// The highest sequence number with no gap below it (0: none).
    pub(super) fn up_to(&self) -> u64 {
        if self.below_one { 0 } else { self.up_to }
    }
}
