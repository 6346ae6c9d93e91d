//! The per-publisher duplicate / order filter of an eCAL subscriber (SPEC §7.2 rule 5), made so
//! that forged samples cannot shut a publisher out.
//!
//! For each publisher entity: the highest clock seen and a 1024-wide window of clocks below it.
//! A clock already in the window, or older than the window, is a duplicate; any other clock
//! below the highest is out of order (dropped unless reordering is allowed). The first clock of
//! a publisher is always accepted. So far this is eCAL's rule, and honest streams see exactly
//! eCAL's verdicts (the exceptions are listed below).
//!
//! A data sample's publisher id and clock are not authenticated: any peer can send a sample
//! naming a live publisher with `clock = i64::MAX`. Under eCAL's rule alone that one sample
//! raises the highest clock for good and every later real message is "older than the window".
//! Two rules, in the spirit of a DDS reader that never lets one sample move its state beyond
//! what the writer's own stream confirms, bound what lies can do:
//!
//! * **A jump is confirmed before it moves the state.** A clock more than [`JUMP_CONFIRM`]
//!   above the highest is delivered (as eCAL would) but *held*: the highest clock and the window
//!   stay. A later clock above a held one by at most the window confirms it (the publisher's own
//!   stream went on from there: a burst of honest loss); then the state moves and the gap is
//!   counted, at most [`WINDOW`] clocks per jump. A lone forged jump is never confirmed, so it
//!   changes nothing and its gap is never counted. Up to [`HELD`] jumps are held at once (the
//!   oldest is let go first: a clock delivered as a held jump and pushed out by [`HELD`] newer
//!   unconfirmed ones may be delivered once more).
//! * **A stream shut out is followed.** Rejected samples (older than the window, or out of
//!   order) are tracked as rising runs: a rejected clock at most [`JUMP_CONFIRM`] above the end
//!   of a run that was extended within the last [`RUN_SPAN`] samples extends it (into a run of
//!   its own: a clock can extend a run without taking it over, so a forged clock cannot hijack
//!   the real stream's run), up to [`RUNS`] runs at once. A run of [`RESYNC_AFTER`] clocks is a
//!   live stream the filter has shut out: from then on each clock that extends it is delivered
//!   (counted once, `Resync`): one older than the window restarts the filter there, one inside
//!   the window is marked seen without moving the highest clock. Runs outlive accepted samples,
//!   so forgeries interleaved with the real stream do not reset its run.
//!
//! What a lie costs, stated and tested below (besides the real message carrying the very clock
//! a forgery names, if any): a forged sample far ahead costs no real message; any group of
//! forged samples (fewer than [`RUNS`] between two real ones) costs at most
//! `RESYNC_AFTER - 1` = 7 real messages, a small forward jump `k` (accepted as eCAL would, its
//! gap of at most 31 counted) at most `k - 1` of them; once a stream shut out is followed,
//! further forged pairs far ahead cost nothing. A faster flood of forgeries can crowd the real
//! stream's run out, and small forged jumps repeated more than [`RUN_SPAN`] samples apart cost
//! up to 7 each: only authentication stops those.
//!
//! Honest streams differ from eCAL only where eCAL would drop more: a late sample that arrives
//! while a far jump is still unconfirmed, and late samples once 8 of them formed a run (each at
//! most 32 clocks and 16 samples after the one before), are delivered.

/// The window of clocks below the highest that are remembered.
pub const WINDOW: i64 = 1024;

/// A forward jump of more than this many clocks is held unconfirmed (delivered, but the filter's
/// state does not move) until a later sample of the same stream confirms it.
pub const JUMP_CONFIRM: i64 = 32;

/// Rejected samples forming a run after which the filter follows the run.
pub const RESYNC_AFTER: u32 = 8;

/// Samples (of this publisher) within which a run must be extended, or it is forgotten.
pub const RUN_SPAN: u64 = 16;

/// Runs of rejected samples tracked at once.
pub const RUNS: usize = 8;

/// Unconfirmed jumps held at once.
pub const HELD: usize = 8;

/// What the filter decided for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Deliver. `gap` clocks were skipped since the previous highest (lost upstream).
    Accept {
        /// Clocks skipped since the previous highest (0 when consecutive).
        gap: u64,
    },
    /// Deliver, but the clock jumped more than [`JUMP_CONFIRM`] ahead: held unconfirmed, the
    /// filter's state does not move until the publisher's stream confirms it.
    Held,
    /// Deliver: a run of [`RESYNC_AFTER`] rejected samples reached, the filter now follows it (a
    /// forged clock had raised the highest; counted once per run).
    Resync,
    /// Deliver: a further clock of a run the filter follows (below the highest clock).
    Followed,
    /// Already delivered, or older than the window: dropped (counted as a duplicate).
    Duplicate,
    /// Older than the highest clock delivered but not seen before: dropped when
    /// `subscriber.drop_out_of_order` is on (counted), as eCAL does.
    OutOfOrder,
}

impl Verdict {
    /// The message is handed to the application.
    pub fn delivers(self) -> bool {
        matches!(self, Verdict::Accept { .. } | Verdict::Held | Verdict::Resync | Verdict::Followed)
    }
}

/// A run of rejected clocks: its last clock, its length, and when it was last extended (the
/// filter's sample count).
#[derive(Debug, Clone, Copy)]
struct Run {
    last: i64,
    len: u32,
    at: u64,
}

/// The highest clock, window and held jumps a restart left behind.
type Shadow = (i64, [u64; (WINDOW / 64) as usize], [Option<i64>; HELD]);

/// State for one publisher entity: 552 bytes (the window 128, the held jumps 128, the runs
/// 256), plus 272 once it restarted below its window.
#[derive(Debug, Clone)]
pub struct SeqFilter {
    max: Option<i64>,
    bits: [u64; (WINDOW / 64) as usize],
    /// Clocks more than [`JUMP_CONFIRM`] above `max`, delivered but not confirmed; the oldest
    /// is replaced first when all are taken.
    held: [Option<i64>; HELD],
    held_next: usize,
    runs: [Option<Run>; RUNS],
    /// Samples checked so far.
    seq: u64,
    /// What a restart below the window left behind: the highest clock, its window and the held
    /// jumps, so a clock delivered before the restart is not delivered again after it.
    /// Boxed: only a filter that restarted below its window (a forgery) carries it.
    shadow: Option<Box<Shadow>>,
}

impl Default for SeqFilter {
    fn default() -> Self {
        Self {
            max: None,
            bits: [0; (WINDOW / 64) as usize],
            held: [None; HELD],
            held_next: 0,
            runs: [None; RUNS],
            seq: 0,
            shadow: None,
        }
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
    /// passes, marks `clock`, and settles the held jumps it reached: those at or below `clock`
    /// are let go, those inside the window marked (they were delivered). Returns how many held
    /// jumps between `max` and `clock` were delivered (no gap for them).
    fn advance_to(&mut self, max: i64, clock: i64) -> u64 {
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
        let mut delivered = 0;
        for h in self.held {
            let Some(h) = h.filter(|&h| h <= clock) else { continue };
            if h < clock {
                delivered += 1;
                if clock.saturating_sub(h) < WINDOW {
                    self.mark(h);
                }
            }
        }
        for h in &mut self.held {
            if h.is_some_and(|h| h <= clock) {
                *h = None;
            }
        }
        delivered
    }

    /// Starts over at `clock`: the first sample, or a run older than the window followed. The
    /// runs stay (the one followed goes on being followed).
    fn restart(&mut self, clock: i64) {
        if let Some(max) = self.max {
            self.shadow = Some(Box::new((max, self.bits, self.held)));
        }
        self.bits = [0; (WINDOW / 64) as usize];
        self.max = Some(clock);
        self.held = [None; HELD];
        self.mark(clock);
    }

    /// Delivered before the last restart.
    fn delivered_before_restart(&self, clock: i64) -> bool {
        let Some((max, bits, held)) = self.shadow.as_deref() else { return false };
        if held.contains(&Some(clock)) || clock == *max {
            return true;
        }
        let (w, b) = Self::slot(clock);
        clock < *max && max.saturating_sub(clock) < WINDOW && bits[w] & b != 0
    }

    /// Records a rejected `clock`; returns the length of the run it now ends (0: a repeat of a
    /// run's last clock, which changes nothing).
    fn extend_run(&mut self, clock: i64) -> u32 {
        let seq = self.seq;
        let fresh = |r: &Run| seq - r.at <= RUN_SPAN;
        let live = self.runs.iter().flatten().filter(|r| fresh(r));
        if live.clone().any(|r| r.last == clock) {
            return 0;
        }
        let extends = |r: &&Run| r.last < clock && clock.saturating_sub(r.last) <= JUMP_CONFIRM;
        let len = live.filter(extends).map(|r| r.len).max().map_or(1, |n| n.saturating_add(1));
        let new = Run { last: clock, len, at: seq };
        // Where it goes: a free or forgotten place, else the shortest run, the newest of those
        // (so a flood of rejected singletons replaces its own, not an older run that grows).
        let place = self.runs.iter().position(|r| r.is_none_or(|r| !fresh(&r))).or_else(|| {
            (0..RUNS).min_by_key(|&i| self.runs[i].map(|r| (r.len, std::cmp::Reverse(r.at)))).filter(|&i| {
                // Never displace a longer run with a shorter one.
                self.runs[i].is_none_or(|r| r.len <= len)
            })
        });
        if let Some(i) = place {
            self.runs[i] = Some(new);
        }
        len
    }

    /// Decides for `clock`; `drop_out_of_order` mirrors eCAL's
    /// `subscriber.drop_out_of_order_messages` (default true).
    pub fn check(&mut self, clock: i64, drop_out_of_order: bool) -> Verdict {
        self.seq += 1;
        let Some(max) = self.max else {
            self.restart(clock);
            return Verdict::Accept { gap: 0 };
        };
        if self.held.contains(&Some(clock)) || self.delivered_before_restart(clock) {
            // Delivered already: as a held jump, or before a restart.
            return Verdict::Duplicate;
        }
        if clock > max {
            // Saturates only for clocks more than i64::MAX apart: a far jump either way.
            let advance = clock.saturating_sub(max);
            if advance <= JUMP_CONFIRM {
                let delivered = self.advance_to(max, clock);
                return Verdict::Accept { gap: ((advance - 1) as u64).saturating_sub(delivered) };
            }
            let confirms = self.held.iter().flatten().any(|&h| h < clock && clock.saturating_sub(h) <= WINDOW);
            if confirms {
                // The stream went on from a held jump: confirmed. A gap of more than the window
                // is counted as the window (a longer one cannot be told from a lie).
                let delivered = self.advance_to(max, clock);
                let gap = ((advance - 1) as u64).saturating_sub(delivered).min(WINDOW as u64);
                return Verdict::Accept { gap };
            }
            self.held[self.held_next] = Some(clock);
            self.held_next = (self.held_next + 1) % HELD;
            return Verdict::Held;
        }
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
        let len = self.extend_run(clock);
        if len < RESYNC_AFTER {
            return rejected;
        }
        // A live stream below the highest clock: followed.
        if age >= WINDOW {
            self.restart(clock);
        } else {
            self.mark(clock);
        }
        if len == RESYNC_AFTER {
            Verdict::Resync
        } else {
            Verdict::Followed
        }
    }
}

/// Publishers tracked per subscriber. A data sample names its publisher, so without a bound a
/// sender inventing ids could grow this map forever; 1024 distinct live publishers of one topic is
/// far beyond real systems. A flood of invented ids costs a subscriber at most about 1 MiB of
/// filters (1024 x [`SeqFilter`]).
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
    fn a_filter_is_small() {
        // What the documentation above and MAX_TRACKED_PUBLISHERS's bound say.
        assert!(std::mem::size_of::<SeqFilter>() <= 600, "{}", std::mem::size_of::<SeqFilter>());
        assert!(std::mem::size_of::<Shadow>() <= 280, "{}", std::mem::size_of::<Shadow>());
    }

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
        assert_eq!(
            f.check(1 + 5001, true),
            Verdict::Accept { gap: WINDOW as u64 },
            "a gap past the window counts as the window"
        );
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
        // A jump, then more loss beyond the window: both held, the later one confirmed, the gap
        // counted as the window.
        let (out, gaps, _) = run(&[1, 100, 5000, 5001], true);
        assert_eq!(out, vec![1, 100, 5000, 5001]);
        assert_eq!(gaps, WINDOW as u64);
        // A lower jump while one is held keeps both: the first is marked when confirmed.
        let (out, _, verdicts) = run(&[10, 50, 45, 51, 50], false);
        assert_eq!(out, vec![10, 50, 45, 51], "{verdicts:?}");
        assert_eq!(verdicts[4], Verdict::Duplicate);
        // The stream walking past a held clock it did send.
        let mut clocks: Vec<i64> = (1..=10).collect();
        clocks.push(50);
        clocks.extend(11..=60);
        let (mut out, gaps, _) = run(&clocks, true);
        out.sort_unstable();
        assert_eq!(out, (1..=60).collect::<Vec<_>>(), "50 delivered once");
        assert_eq!(gaps, 0);
    }

    /// Honest 1..=100, a forged pair that confirms itself far ahead after 50, then `extra`
    /// forged clocks every `every` real messages, each real one `copies` times. Returns the real
    /// messages lost.
    fn interleaved(extra: &[i64], every: usize, copies: usize) -> usize {
        let mut clocks: Vec<i64> = (1..=50).collect();
        clocks.extend([1 << 40, (1 << 40) + 1]);
        for (k, c) in (51..=100).enumerate() {
            for _ in 0..copies {
                clocks.push(c);
            }
            if k % every == every - 1 {
                clocks.extend(extra);
            }
        }
        let (out, _, _) = run(&clocks, true);
        (1..=100).filter(|c| !out.contains(c)).count()
    }

    #[test]
    fn forgeries_interleaved_with_the_stream_cannot_keep_it_out() {
        // A clock of 0 after every 7 real messages no longer breaks the real stream's run...
        assert!(interleaved(&[0], 7, 1) < RESYNC_AFTER as usize);
        // ...nor do duplicated real datagrams...
        assert!(interleaved(&[], 1, 2) < RESYNC_AFTER as usize);
        // ...nor a fresh forged pair far ahead every few messages once the stream is followed,
        // nor forged clocks just ahead of the real one that try to take its run over.
        assert!(interleaved(&[1 << 41, (1 << 41) + 1], 3, 1) < RESYNC_AFTER as usize);
        assert!(interleaved(&[i64::MIN, i64::MAX, -3, 7], 2, 2) < RESYNC_AFTER as usize);
    }

    #[test]
    fn following_a_run_inside_the_window_keeps_the_highest_clock_and_its_window() {
        // Highest 100, then 8 late samples (drop on): the 8th is followed, without moving the
        // highest clock back, so a duplicate of 95 stays a duplicate and 101 has no gap.
        let mut clocks: Vec<i64> = (1..=79).collect();
        clocks.extend([81, 82, 83, 84, 85, 86, 88, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99, 100]);
        clocks.extend(80..=80);
        let mut f = SeqFilter::default();
        for &c in &clocks {
            f.check(c, true);
        }
        let late: Vec<Verdict> = [101, 87].iter().map(|&c| f.check(c, true)).collect();
        assert_eq!(late, vec![Verdict::Accept { gap: 0 }, Verdict::OutOfOrder]);
        assert_eq!(f.check(95, true), Verdict::Duplicate);
    }

    #[test]
    fn gaps_credited_per_jump_are_capped_and_extreme_clocks_do_not_overflow() {
        // Forged rising clocks near i64::MIN would resync the filter down there: the real
        // stream's next jump back up counts at most the window.
        let mut clocks: Vec<i64> = (1..=20).collect();
        clocks.extend((0..8).map(|k| i64::MIN + k));
        clocks.extend(21..=40);
        let (out, gaps, _) = run(&clocks, true);
        assert!((21..=40).all(|c| out.contains(&c)), "{out:?}");
        assert!(gaps <= WINDOW as u64, "{gaps}");
        let (_, gaps, _) = run(&[i64::MIN, i64::MAX, i64::MIN + 1, i64::MAX - 1, 0, 1, i64::MAX], false);
        assert!(gaps <= 2 * WINDOW as u64);
    }

    use proptest::prelude::*;

    proptest! {
        /// Honest streams (loss bursts and reorders within JUMP_CONFIRM, duplicates): eCAL's
        /// verdicts, gaps included, except where 8 late samples formed a run: from then on late
        /// samples of that run are delivered where eCAL drops them (never the other way).
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
            let (mut rejected, mut followed) = (0, false);
            for &k in &clocks {
                let want = ecal_rule(&mut max, &mut seen, k, drop);
                let v = f.check(k, drop);
                followed |= v == Verdict::Resync;
                if followed && !want && v.delivers() {
                    // Delivered where eCAL drops: only a late sample, after a run was followed.
                    prop_assert!(rejected >= RESYNC_AFTER - 1, "{} rejected before", rejected);
                    prop_assert!(highest.is_some_and(|h| k < h));
                    seen.insert(k);
                    continue;
                }
                prop_assert_eq!(v.delivers(), want, "clock {} in {:?}", k, clocks);
                rejected += u32::from(!want);
                if let Verdict::Accept { gap } = v { gaps += gap; }
                if want {
                    if let Some(h) = highest { if k > h { want_gaps += (k - h - 1) as u64; } }
                    highest = highest.max(Some(k));
                }
            }
            prop_assert_eq!(gaps, want_gaps);
        }

        /// Honest streams with loss bursts of any length and duplicates (no reorder): eCAL's
        /// deliveries exactly, and its gaps with each jump counted as at most the window.
        #[test]
        fn honest_loss_of_any_length_gets_ecal_deliveries(
            ops in proptest::collection::vec((0u8..6, 0u32..5000), 1..300),
            drop in any::<bool>(),
        ) {
            let mut clocks = Vec::new();
            let mut c = 0i64;
            for (op, n) in ops {
                match op {
                    0 => c += i64::from(n),                                           // a burst lost
                    1 if !clocks.is_empty() => clocks.push(*clocks.last().unwrap()), // duplicate
                    _ => {}
                }
                c += 1;
                clocks.push(c);
            }
            // Two consecutive clocks at the end: the last jump is confirmed too.
            clocks.extend([c + 1, c + 2]);
            let (mut max, mut seen) = (None, std::collections::BTreeSet::new());
            let mut f = SeqFilter::default();
            let (mut gaps, mut want_gaps, mut highest) = (0u64, 0u64, None::<i64>);
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
            prop_assert!(gaps <= want_gaps);
            // Bursts counted exactly while a held jump and the one confirming it together stay
            // within the window; beyond, as the window.
            if clocks.windows(2).all(|w| w[1] - w[0] < WINDOW / 2) {
                prop_assert_eq!(gaps, want_gaps);
            }
        }

        /// Forged clocks of any value interleaved with an honest in-order stream (groups of at
        /// most RUNS - 1 between two real messages, each real one possibly twice): at most
        /// RESYNC_AFTER - 1 real messages lost per group, besides those whose clocks they name
        /// (and, by the deterministic tests above, at most that many in all once the real
        /// stream is followed).
        #[test]
        fn interleaved_forgeries_are_bounded(
            len in 1usize..300,
            lies in proptest::collection::vec(
                (0usize..300, proptest::collection::vec(prop_oneof![
                    any::<i64>(),
                    (-40i64..340),
                    Just(i64::MAX), Just(i64::MIN),
                ], 1..(RUNS))),
                0..40),
            twice in proptest::collection::vec(any::<bool>(), 300),
        ) {
            let real: Vec<i64> = (1..=len as i64).collect();
            let mut clocks = Vec::new();
            let mut named = std::collections::BTreeSet::new();
            for (i, &c) in real.iter().enumerate() {
                clocks.push(c);
                if twice[i] { clocks.push(c); }
                // At most one group (fewer than RUNS clocks) after each real message.
                if let Some((_, group)) = lies.iter().find(|(at, _)| *at == i) {
                    clocks.extend(group);
                    named.extend(group.iter().copied());
                }
            }
            let (out, _, _) = run(&clocks, true);
            let out: std::collections::BTreeSet<i64> = out.into_iter().collect();
            let lost = real.iter().filter(|c| !out.contains(c) && !named.contains(c)).count();
            let groups = lies.iter().map(|(at, _)| *at).filter(|at| *at < len).collect::<std::collections::BTreeSet<_>>().len();
            prop_assert!(lost <= (RESYNC_AFTER as usize - 1) * groups.max(1), "lost {} of {} to {} groups", lost, len, groups);
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
