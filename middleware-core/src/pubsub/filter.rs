//! The per-publisher duplicate / order filter of an eCAL subscriber (SPEC §7.2 rule 5), made so
//! that one forged sample cannot shut a publisher out.
//!
//! For each publisher entity: the highest clock seen and a 1024-wide window of clocks below it.
//! A clock already in the window, or older than the window, is a duplicate; any other clock
//! below the highest is out of order (dropped unless reordering is allowed). The first clock of
//! a publisher is always accepted. So far this is eCAL's rule, and honest streams see exactly
//! eCAL's verdicts.
//!
//! A data sample's publisher id and clock are not authenticated: any peer can send a sample
//! naming a live publisher with `clock = i64::MAX`. Under eCAL's rule alone that one sample
//! raises the highest clock for good and every later real message is "older than the window".
//! Two rules, in the spirit of a DDS reader that never lets one sample move its state beyond
//! what the writer's own stream confirms, bound what lies can do:
//!
//! * **A jump is confirmed before it moves the state.** A clock more than [`JUMP_CONFIRM`]
//!   above the highest is delivered (as eCAL would) but *held*: the highest clock and the window
//!   stay. A later clock above the held one by at most the window confirms it (the publisher's
//!   own stream went on from there: a burst of honest loss); then the state moves and the gap is
//!   counted. A lone forged jump is never confirmed, so it changes nothing and its gap is never
//!   counted (`sequence_gaps` counts only confirmed advances). A newer far jump replaces the
//!   held one.
//! * **A stream shut out is followed.** When [`RESYNC_AFTER`] samples in a row are rejected
//!   (older than the window, or out of order) and their clocks rise (each at most
//!   [`JUMP_CONFIRM`] above the one before: a live stream running below a highest clock it never
//!   sent), the filter resynchronises to that stream (counted). This bounds what several
//!   consistent forgeries (which do confirm each other) or a small forged jump can cost.
//!
//! What a lie costs, stated and tested below: one forged sample far ahead costs no real message
//! (at most the one real message carrying the very same clock); any forgery, or consistent group
//! of forgeries, costs at most `RESYNC_AFTER - 1` = 7 real messages of that publisher.
//! Honest streams differ from eCAL only where eCAL would drop more: a late sample that arrives
//! while a far jump is still unconfirmed, or the 8th of 8 rising late samples in a row, is
//! delivered.

const WINDOW: i64 = 1024;

/// A forward jump of more than this many clocks is held unconfirmed (delivered, but the filter's
/// state does not move) until a later sample of the same stream confirms it.
pub const JUMP_CONFIRM: i64 = 32;

/// Rejected samples in a row, with rising clocks, after which the filter resynchronises to them.
pub const RESYNC_AFTER: u32 = 8;

/// What the filter decided for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver. `gap` clocks were skipped since the previous highest (lost upstream).
    Accept {
        /// Clocks skipped since the previous highest (0 when consecutive).
        gap: u64,
    },
    /// Deliver, but the clock jumped more than [`JUMP_CONFIRM`] ahead: held unconfirmed, the
    /// filter's state does not move until the publisher's stream confirms it.
    Held,
    /// Deliver: [`RESYNC_AFTER`] rising samples in a row were rejected, and the filter followed
    /// them (a forged clock had raised the highest; counted).
    Resync,
    /// Already delivered, or older than the window: dropped (counted as a duplicate).
    Duplicate,
    /// Older than the highest clock delivered but not seen before: dropped when
    /// `subscriber.drop_out_of_order` is on (counted), as eCAL does.
    OutOfOrder,
}

impl Verdict {
    /// The message is handed to the application.
    pub fn delivers(self) -> bool {
        matches!(self, Verdict::Accept { .. } | Verdict::Held | Verdict::Resync)
    }
}

/// State for one publisher entity.
#[derive(Debug, Clone)]
pub struct SeqFilter {
    max: Option<i64>,
    bits: [u64; (WINDOW / 64) as usize],
    /// A clock more than [`JUMP_CONFIRM`] above `max`, delivered but not confirmed. Always
    /// above `max` while set.
    held: Option<i64>,
    /// The rising run of rejected clocks: the last one and how many.
    run: Option<(i64, u32)>,
}

impl Default for SeqFilter {
    fn default() -> Self {
        Self { max: None, bits: [0; (WINDOW / 64) as usize], held: None, run: None }
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

    /// Moves the highest clock from `max` up to `clock` (> `max`), clearing the window slots it
    /// passes, and marks `clock`.
    fn advance_to(&mut self, max: i64, clock: i64) {
        if clock.saturating_sub(max) >= WINDOW {
            self.bits = [0; (WINDOW / 64) as usize];
        } else {
            for c in max + 1..=clock {
                let (w, b) = Self::slot(c);
                self.bits[w] &= !b;
            }
        }
        self.max = Some(clock);
        self.mark(clock);
    }

    /// Starts over at `clock`: the first sample, or a resynchronisation.
    fn restart(&mut self, clock: i64) {
        self.bits = [0; (WINDOW / 64) as usize];
        self.max = Some(clock);
        self.held = None;
        self.run = None;
        self.mark(clock);
    }

    /// Decides for `clock`; `drop_out_of_order` mirrors eCAL's
    /// `subscriber.drop_out_of_order_messages` (default true).
    pub fn check(&mut self, clock: i64, drop_out_of_order: bool) -> Verdict {
        let Some(max) = self.max else {
            self.restart(clock);
            return Verdict::Accept { gap: 0 };
        };
        if self.held == Some(clock) {
            // Delivered already, as a held jump.
            return Verdict::Duplicate;
        }
        if clock > max {
            // Saturates only for clocks more than i64::MAX apart: a far jump either way.
            let advance = clock.saturating_sub(max);
            if advance <= JUMP_CONFIRM {
                let mut gap = (advance - 1) as u64;
                self.advance_to(max, clock);
                if let Some(h) = self.held.filter(|&h| h < clock) {
                    // The stream passed a held jump it never sent, or that was a real message
                    // delivered early: either way it was delivered, so it is no gap.
                    self.held = None;
                    self.mark(h);
                    gap = gap.saturating_sub(1);
                }
                self.run = None;
                return Verdict::Accept { gap };
            }
            match self.held {
                Some(h) if clock > h && clock.saturating_sub(h) <= WINDOW => {
                    // Confirmed: the stream went on from the held jump.
                    self.advance_to(max, clock);
                    if clock.saturating_sub(h) < WINDOW {
                        self.mark(h);
                    }
                    self.held = None;
                    self.run = None;
                    Verdict::Accept { gap: (advance - 2) as u64 }
                }
                _ => {
                    self.held = Some(clock);
                    Verdict::Held
                }
            }
        } else {
            let age = max.saturating_sub(clock);
            if age < WINDOW && self.seen(clock) {
                return Verdict::Duplicate;
            }
            let rejected = if age >= WINDOW {
                Verdict::Duplicate
            } else if drop_out_of_order {
                Verdict::OutOfOrder
            } else {
                self.mark(clock);
                return Verdict::Accept { gap: 0 };
            };
            let n = match self.run {
                Some((last, n)) if clock > last && clock.saturating_sub(last) <= JUMP_CONFIRM => n + 1,
                _ => 1,
            };
            if n >= RESYNC_AFTER {
                self.restart(clock);
                return Verdict::Resync;
            }
            self.run = Some((clock, n));
            rejected
        }
    }
}

/// Publishers tracked per subscriber. A data sample names its publisher, so without a bound a
/// sender inventing ids could grow this map forever; 1024 distinct live publishers of one topic is
/// far beyond real systems.
pub const MAX_TRACKED_PUBLISHERS: usize = 1024;

/// The filters of one subscriber, bounded: when full, the publisher heard from least recently is
/// forgotten (counted), so it restarts as a new publisher if it comes back.
#[derive(Debug)]
pub struct FilterTable {
    /// Least recently heard first ([`crate::bounded::OldestFirst`]: foldhash, seeded per
    /// process): looked up once per message; the ids come from the network, but the table is
    /// bounded (a crafted collision costs a scan of at most that many), and the publisher to
    /// forget is its front, found in O(1).
    filters: crate::bounded::OldestFirst<u64, SeqFilter>,
    forgotten: u64,
}

impl Default for FilterTable {
    fn default() -> Self {
        Self { filters: crate::bounded::oldest_first(), forgotten: 0 }
    }
}

impl FilterTable {
    /// The verdict for message `clock` of `publisher`; the least recently heard publisher is
    /// forgotten first when the table is full.
    pub fn check(&mut self, publisher: u64, clock: i64, drop_out_of_order: bool) -> Verdict {
        if let Some(f) = self.filters.to_back(&publisher) {
            return f.check(clock, drop_out_of_order);
        }
        if self.filters.len() >= MAX_TRACKED_PUBLISHERS && self.filters.pop_front().is_some() {
            self.forgotten += 1;
        }
        let mut f = SeqFilter::default();
        let v = f.check(clock, drop_out_of_order);
        self.filters.insert(publisher, f);
        v
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
        for id in 0..(MAX_TRACKED_PUBLISHERS as u64 + 100) {
            t.check(id, 1, true);
        }
        assert_eq!(t.len(), MAX_TRACKED_PUBLISHERS);
        assert_eq!(t.forgotten(), 100);
        // The most recent publishers are kept: a repeat of the last clock is still a duplicate.
        let last = MAX_TRACKED_PUBLISHERS as u64 + 99;
        assert_eq!(t.check(last, 1, true), Verdict::Duplicate);
        // Hearing the oldest again makes it the newest: the next newcomer forgets another.
        let oldest = 100;
        assert_eq!(t.check(oldest, 1, true), Verdict::Duplicate);
        t.check(u64::MAX, 1, true);
        assert_eq!(t.check(oldest, 1, true), Verdict::Duplicate, "kept");
        assert_eq!(t.check(101, 1, true), Verdict::Accept { gap: 0 }, "forgotten, so new again");
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
    fn big_jumps_clear_the_window_once_confirmed() {
        let mut f = SeqFilter::default();
        f.check(1, true);
        assert_eq!(f.check(1 + 5000, true), Verdict::Held);
        assert_eq!(f.check(1 + 5001, true), Verdict::Accept { gap: 4999 });
        assert_eq!(f.check(1 + 5001 - 1024 + 1, false), Verdict::Accept { gap: 0 });
        assert_eq!(f.check(1 + 5000, true), Verdict::Duplicate, "the held jump was marked when confirmed");
        assert_eq!(f.check(i64::MAX, true), Verdict::Held);
        assert_eq!(f.check(i64::MAX, true), Verdict::Duplicate);
        assert_eq!(f.check(1 + 5002, true), Verdict::Accept { gap: 0 });
    }

    /// The old rule (eCAL's): what honest streams must still get.
    fn ecal_rule(max: &mut Option<i64>, seen: &mut std::collections::BTreeSet<i64>, clock: i64, drop: bool) -> bool {
        let Some(m) = *max else {
            *max = Some(clock);
            seen.insert(clock);
            return true;
        };
        if clock > m {
            *max = Some(clock);
            seen.insert(clock);
            return true;
        }
        if m - clock >= WINDOW || seen.contains(&clock) || drop {
            return false;
        }
        seen.insert(clock);
        true
    }

    /// Feeds `clocks` and returns the clocks delivered and the gaps counted.
    fn run(clocks: &[i64], drop: bool) -> (Vec<i64>, u64, Vec<Verdict>) {
        let mut f = SeqFilter::default();
        let (mut out, mut gaps, mut verdicts) = (Vec::new(), 0, Vec::new());
        for &c in clocks {
            let v = f.check(c, drop);
            if let Verdict::Accept { gap } = v {
                gaps += gap;
            }
            if v.delivers() {
                out.push(c);
            }
            verdicts.push(v);
        }
        (out, gaps, verdicts)
    }

    #[test]
    fn one_forged_max_clock_mid_stream_costs_nothing() {
        let mut clocks: Vec<i64> = (1..=45).collect();
        clocks.push(i64::MAX);
        clocks.extend(46..=80);
        let (out, gaps, verdicts) = run(&clocks, true);
        assert_eq!(out.len(), 81, "every real message and the forgery itself: {verdicts:?}");
        assert_eq!(gaps, 0, "a lone jump is no gap");
        assert_eq!(verdicts[45], Verdict::Held);
        // Negative and minimum clocks: too old, dropped, nothing moves.
        let mut clocks: Vec<i64> = (1..=10).collect();
        clocks.extend([i64::MIN, -5, 0]);
        clocks.extend(11..=20);
        let (out, gaps, _) = run(&clocks, true);
        assert_eq!(out, (1..=20).collect::<Vec<_>>());
        assert_eq!(gaps, 0);
    }

    #[test]
    fn consistent_forgeries_cost_at_most_seven_messages() {
        for forged in [vec![i64::MAX - 1, i64::MAX], vec![1000, 1001], vec![58], vec![60, 61, 62], vec![50 + 31]] {
            let mut clocks: Vec<i64> = (1..=50).collect();
            clocks.extend(&forged);
            clocks.extend(51..=120);
            let (out, _, verdicts) = run(&clocks, true);
            let real = out.iter().filter(|c| !forged.contains(c)).count();
            // A forged clock that names a real one takes that message's place (it counts as the
            // real one here); at most RESYNC_AFTER - 1 others are lost.
            let lost = 120 - real - forged.iter().filter(|c| (51..=120).contains(*c)).count();
            assert!(lost < RESYNC_AFTER as usize, "{forged:?}: lost {lost}: {verdicts:?}");
            assert!(out.ends_with(&[118, 119, 120]), "{forged:?}: the stream is followed again: {out:?}");
        }
    }

    #[test]
    fn a_forged_first_sample_is_left_behind() {
        let mut clocks = vec![i64::MAX];
        clocks.extend(1..=30);
        let (out, _, verdicts) = run(&clocks, true);
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Resync).count(), 1);
        assert_eq!(out.len(), 1 + 30 - (RESYNC_AFTER as usize - 1), "{verdicts:?}");
    }

    #[test]
    fn honest_loss_bursts_count_their_gap_once_confirmed() {
        let mut clocks: Vec<i64> = (1..=10).collect();
        clocks.extend([200, 201, 202]);
        let (out, gaps, verdicts) = run(&clocks, true);
        assert_eq!(out, clocks, "{verdicts:?}");
        assert_eq!(gaps, 189);
        // Two bursts in a row: the second jump, within the window of the held one, confirms it.
        let (out, gaps, _) = run(&[1, 100, 1000, 1001], true);
        assert_eq!(out, vec![1, 100, 1000, 1001]);
        assert_eq!(gaps, 998 - 1);
        // A jump, then more loss beyond the window: the newer jump replaces the held one.
        let (out, gaps, _) = run(&[1, 100, 5000, 5001], true);
        assert_eq!(out, vec![1, 100, 5000, 5001]);
        assert_eq!(gaps, 4999 - 1, "the replaced jump's own message is counted as lost (one over)");
        // The stream walking past a held clock it did send.
        let mut clocks: Vec<i64> = (1..=10).collect();
        clocks.push(50);
        clocks.extend(11..=60);
        let (mut out, gaps, _) = run(&clocks, true);
        out.sort_unstable();
        assert_eq!(out, (1..=60).collect::<Vec<_>>(), "50 delivered once");
        assert_eq!(gaps, 0);
    }

    use proptest::prelude::*;

    proptest! {
        /// Honest streams (loss bursts and reorders within JUMP_CONFIRM, duplicates):
        /// exactly eCAL's verdicts, gaps included.
        #[test]
        fn honest_streams_get_ecal_verdicts(
            ops in proptest::collection::vec((0u8..20, 0u8..9), 1..400),
            drop in any::<bool>(),
            start in -5i64..1_000_000,
        ) {
            let mut clocks = Vec::new();
            let mut c = start;
            for (op, n) in ops {
                match op {
                    0 => c += n as i64,                       // a burst lost
                    1 if !clocks.is_empty() => clocks.push(*clocks.last().unwrap()), // duplicate
                    2 if clocks.len() >= 2 => {               // a swap of the last two
                        let l = clocks.len();
                        clocks.swap(l - 1, l - 2);
                    }
                    3 if clocks.len() >= 4 => clocks.insert(clocks.len() - 3, c - 2), // late by 3
                    _ => {}
                }
                c += 1;
                clocks.push(c);
            }
            let (mut max, mut seen) = (None, std::collections::BTreeSet::new());
            let mut f = SeqFilter::default();
            let mut highest: Option<i64> = None;
            let mut want_gaps = 0u64;
            let mut gaps = 0u64;
            for &k in &clocks {
                let want = ecal_rule(&mut max, &mut seen, k, drop);
                let v = f.check(k, drop);
                prop_assert_eq!(v.delivers(), want, "clock {} in {:?}", k, clocks);
                if let Verdict::Accept { gap } = v { gaps += gap; }
                if want {
                    if let Some(h) = highest { if k > h { want_gaps += (k - h - 1) as u64; } }
                    highest = highest.max(Some(k));
                }
            }
            prop_assert_eq!(gaps, want_gaps);
        }

        /// Any forged clocks, in one group at any place of an honest in-order stream: at most
        /// RESYNC_AFTER - 1 real messages lost besides those whose clock a forgery named.
        #[test]
        fn one_group_of_forgeries_is_bounded(
            forged in proptest::collection::vec(any::<i64>(), 1..4),
            at in 0usize..200,
            len in 1usize..300,
        ) {
            let real: Vec<i64> = (1..=len as i64).collect();
            let at = at.min(len);
            let mut clocks = real[..at].to_vec();
            clocks.extend(&forged);
            clocks.extend(&real[at..]);
            let (out, _, _) = run(&clocks, true);
            let delivered_real = real.iter().filter(|c| out.contains(c) && !forged.contains(c)).count();
            let named = real.iter().filter(|c| forged.contains(c)).count();
            prop_assert!(len - delivered_real - named < RESYNC_AFTER as usize,
                "lost {} of {}", len - delivered_real - named, len);
        }
    }
}
