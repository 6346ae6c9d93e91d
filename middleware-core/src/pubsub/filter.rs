//! The per-publisher duplicate / order filter of an eCAL subscriber (SPEC §7.2 rule 5).
//!
//! For each publisher entity: the highest clock seen and a 1024-wide window of clocks below it.
//! A clock already in the window, or older than the window, is a duplicate; any other clock
//! below the highest is out of order (dropped unless reordering is allowed). The first clock of
//! a publisher is always accepted.

const WINDOW: i64 = 1024;

/// What the filter decided for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver. `gap` clocks were skipped since the previous highest (lost upstream).
    Accept {
        /// Clocks skipped since the previous highest (0 when consecutive).
        gap: u64,
    },
    /// Already delivered, or older than the window: dropped (counted as a duplicate).
    Duplicate,
    /// Older than the highest clock delivered but not seen before: dropped when
    /// `subscriber.drop_out_of_order` is on (counted), as eCAL does.
    OutOfOrder,
}

/// State for one publisher entity.
#[derive(Debug, Clone)]
pub struct SeqFilter {
    max: Option<i64>,
    bits: [u64; (WINDOW / 64) as usize],
}

impl Default for SeqFilter {
    fn default() -> Self {
        Self { max: None, bits: [0; (WINDOW / 64) as usize] }
    }
}

impl SeqFilter {
    fn slot(clock: i64) -> (usize, u64) {
        let i = clock.rem_euclid(WINDOW) as usize;
        (i / 64, 1u64 << (i % 64))
    }
    fn mark(&mut self, clock: i64) {
        let (w, b) = Self::slot(clock);
        self.bits[w] |= b;
    }
    fn seen(&self, clock: i64) -> bool {
        let (w, b) = Self::slot(clock);
        self.bits[w] & b != 0
    }

    /// Decides for `clock`; `drop_out_of_order` mirrors eCAL's
    /// `subscriber.drop_out_of_order_messages` (default true).
    pub fn check(&mut self, clock: i64, drop_out_of_order: bool) -> Verdict {
        let Some(max) = self.max else {
            self.max = Some(clock);
            self.mark(clock);
            return Verdict::Accept { gap: 0 };
        };
        if clock > max {
            let advance = clock.saturating_sub(max);
            if advance >= WINDOW {
                self.bits = [0; (WINDOW / 64) as usize];
            } else {
                for c in max + 1..=clock {
                    let (w, b) = Self::slot(c);
                    self.bits[w] &= !b;
                }
            }
            self.max = Some(clock);
            self.mark(clock);
            return Verdict::Accept { gap: (advance - 1) as u64 };
        }
        if max.saturating_sub(clock) >= WINDOW || self.seen(clock) {
            return Verdict::Duplicate;
        }
        if drop_out_of_order {
            return Verdict::OutOfOrder;
        }
        self.mark(clock);
        Verdict::Accept { gap: 0 }
    }
}

/// Publishers tracked per subscriber. A data sample names its publisher, so without a bound a
/// sender inventing ids could grow this map forever; 1024 distinct live publishers of one topic is
/// far beyond real systems.
pub const MAX_TRACKED_PUBLISHERS: usize = 1024;

/// The filters of one subscriber, bounded: when full, the publisher heard from least recently is
/// forgotten (counted), so it restarts as a new publisher if it comes back.
#[derive(Debug, Default)]
pub struct FilterTable {
    /// foldhash, seeded per process: looked up once per message; the ids come from the
    /// network, but the table is bounded (a crafted collision costs a scan of at most that many).
    filters: std::collections::HashMap<u64, (SeqFilter, std::time::Instant), foldhash::fast::RandomState>,
    forgotten: u64,
}

impl FilterTable {
    /// The verdict for message `clock` of `publisher` received at `now`; the least recently heard
    /// publisher is forgotten first when the table is full.
    pub fn check(&mut self, now: std::time::Instant, publisher: u64, clock: i64, drop_out_of_order: bool) -> Verdict {
        if self.filters.len() >= MAX_TRACKED_PUBLISHERS && !self.filters.contains_key(&publisher) {
            if let Some(oldest) = self.filters.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k) {
                self.filters.remove(&oldest);
                self.forgotten += 1;
            }
        }
        let (f, seen) = self.filters.entry(publisher).or_insert_with(|| (SeqFilter::default(), now));
        *seen = now;
        f.check(clock, drop_out_of_order)
    }

    /// Publishers forgotten to stay within [`MAX_TRACKED_PUBLISHERS`].
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    /// Publishers tracked now.
    pub fn len(&self) -> usize {
        self.filters.len()
    }

    /// No publisher tracked.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_bounded() {
        let mut t = FilterTable::default();
        let t0 = std::time::Instant::now();
        for id in 0..(MAX_TRACKED_PUBLISHERS as u64 + 100) {
            t.check(t0 + std::time::Duration::from_micros(id), id, 1, true);
        }
        assert_eq!(t.len(), MAX_TRACKED_PUBLISHERS);
        assert_eq!(t.forgotten(), 100);
        // The most recent publishers are kept: a repeat of the last clock is still a duplicate.
        let last = MAX_TRACKED_PUBLISHERS as u64 + 99;
        assert_eq!(t.check(t0, last, 1, true), Verdict::Duplicate);
    }

    #[test]
    fn in_order_with_gap_duplicate_and_late() {
        let mut f = SeqFilter::default();
        assert_eq!(f.check(5, true), Verdict::Accept { gap: 0 }); // first may be > 1
        assert_eq!(f.check(6, true), Verdict::Accept { gap: 0 });
        assert_eq!(f.check(6, true), Verdict::Duplicate);
        assert_eq!(f.check(9, true), Verdict::Accept { gap: 2 });
        assert_eq!(f.check(8, true), Verdict::OutOfOrder);
        assert_eq!(f.check(5, true), Verdict::Duplicate);
        assert_eq!(f.check(9 - 1024, true), Verdict::Duplicate); // too old to track
    }

    #[test]
    fn reordering_allowed() {
        let mut f = SeqFilter::default();
        assert_eq!(f.check(1, false), Verdict::Accept { gap: 0 });
        assert_eq!(f.check(3, false), Verdict::Accept { gap: 1 });
        assert_eq!(f.check(2, false), Verdict::Accept { gap: 0 });
        assert_eq!(f.check(2, false), Verdict::Duplicate);
    }

    #[test]
    fn big_jumps_clear_the_window() {
        let mut f = SeqFilter::default();
        f.check(1, true);
        assert_eq!(f.check(1 + 5000, true), Verdict::Accept { gap: 4999 });
        assert_eq!(f.check(1 + 5000 - 1024 + 1, false), Verdict::Accept { gap: 0 });
        assert_eq!(f.check(i64::MAX, true), Verdict::Accept { gap: (i64::MAX - 5001 - 1) as u64 });
    }
}
