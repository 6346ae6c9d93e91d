//! The figures a publisher or subscriber reports in its registration with the meaning eCAL 6.1
//! gives them, so that eCAL Monitor shows our entities as it shows its own:
//!
//! - `data_frequency`: messages per 1000 s (mHz), measured between registration rounds as eCAL
//!   does: the ticks since the previous round over the time from the previous round's last tick
//!   to this round's last tick; unchanged through a round without ticks, and reset to 0 once
//!   no tick came for three expected periods. A publisher ticks on every `send` call (also
//!   while no subscriber is connected), at its monotonic clock; a subscriber ticks on every
//!   accepted message, at the message's send time.
//! - `data_latency_us` (subscribers): receive time minus send time, µs, over all accepted
//!   messages: count, latest, min, max, mean, and in `variance` the running sum of squared
//!   deviations (Welford's M2), which is what eCAL 6.1 puts in that field.
//!
//! Pure: every time is a parameter. Per message the hot path stores a tick count and the last
//! tick's time (publishers: atomics; subscribers: under the lock delivery already holds, which
//! also updates the latency figures); the rate arithmetic runs here, once per round.

use crate::pb::Statistics;

/// How many expected periods without a tick reset the frequency to 0 (eCAL's reset factor).
pub const RESET_FACTOR: f64 = 3.0;

/// The frequency of one entity across registration rounds.
#[derive(Debug, Clone, Default)]
pub struct RateWindow {
    /// Tick count and time (µs) of the last tick of the previous round; `None` until the first
    /// tick after creation or a reset.
    base: Option<(u64, i64)>,
    /// Tick count at the previous round (to tell whether any tick came since).
    seen: u64,
    hz: f64,
}

impl RateWindow {
    /// One registration round: `ticks` ticks so far, the last at `last_tick_us`; `now_us` on
    /// the same clock. Returns the frequency in mHz as eCAL reports it.
    pub fn round(&mut self, ticks: u64, last_tick_us: i64, now_us: i64) -> i32 {
        let fresh = ticks > self.seen;
        self.seen = ticks;
        match self.base {
            None => {
                // The first tick opens the window; its rate shows from the next round on.
                if fresh {
                    self.base = Some((ticks, last_tick_us));
                }
                self.hz = 0.0;
            }
            Some((n0, t0)) if fresh => {
                let dt = last_tick_us.saturating_sub(t0);
                if dt > 0 {
                    self.hz = (ticks.saturating_sub(n0)) as f64 * 1e6 / dt as f64;
                    self.base = Some((ticks, last_tick_us));
                } else if dt < 0 {
                    // The tick clock went back (a subscriber's ticks are the senders' clocks:
                    // two publishers on skewed hosts): restart the window from here, keeping
                    // the last figure, rather than waiting for the old base to come round.
                    self.base = Some((ticks, last_tick_us));
                }
                // dt == 0: no time to divide by; keep the base, the figure, and count on.
            }
            Some(_) => {}
        }
        if self.hz <= 0.0 {
            return 0;
        }
        if !fresh {
            let timeout_us = RESET_FACTOR * 1e6 / self.hz;
            if (now_us.saturating_sub(last_tick_us)) as f64 > timeout_us {
                self.base = None;
                self.hz = 0.0;
                return 0;
            }
        }
        to_mhz(self.hz)
    }
}

fn to_mhz(hz: f64) -> i32 {
    let mhz = hz * 1000.0;
    if mhz >= f64::from(i32::MAX) {
        i32::MAX
    } else {
        mhz as i32
    }
}

/// eCAL's latency statistics (SPEC §5.7), updated per accepted message.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyStats {
    count: u64,
    latest: f64,
    min: f64,
    max: f64,
    mean: f64,
    m2: f64,
}

impl Default for LatencyStats {
    fn default() -> Self {
        Self { count: 0, latest: 0.0, min: f64::INFINITY, max: f64::NEG_INFINITY, mean: 0.0, m2: 0.0 }
    }
}

impl LatencyStats {
    /// Adds one latency sample in microseconds (Welford's update of mean and M2).
    pub fn add(&mut self, latency_us: f64) {
        self.count += 1;
        self.latest = latency_us;
        self.min = self.min.min(latency_us);
        self.max = self.max.max(latency_us);
        let delta = latency_us - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (latency_us - self.mean);
    }

    /// As written into the registration (`variance` holds M2, as eCAL 6.1 writes it).
    pub fn to_pb(&self) -> Statistics {
        Statistics {
            count: self.count,
            latest: self.latest,
            min: self.min,
            max: self.max,
            mean: self.mean,
            variance: self.m2,
        }
    }

    /// The sample variance (what `variance` would mean in statistics), µs².
    pub fn sample_variance(&self) -> f64 {
        if self.count < 2 {
            0.0
        } else {
            self.m2 / (self.count - 1) as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    /// Feeds ticks every `period_us` from `start`, with a round every second.
    fn ticking(w: &mut RateWindow, start: i64, period_us: i64, rounds: i64) -> (Vec<i32>, u64, i64) {
        let mut out = Vec::new();
        let (mut n, mut last) = (0u64, start);
        let mut t = start;
        for r in 1..=rounds {
            while t <= start + r * S {
                n += 1;
                last = t;
                t += period_us;
            }
            out.push(w.round(n, last, start + r * S));
        }
        (out, n, last)
    }

    #[test]
    fn ten_hertz_reads_ten_thousand_millihertz_from_the_second_round() {
        let mut w = RateWindow::default();
        let (r, ..) = ticking(&mut w, 0, S / 10, 5);
        assert_eq!(r[0], 0, "the first round only opens the window");
        for mhz in &r[1..] {
            assert_eq!(*mhz, 10_000, "{r:?}");
        }
    }

    #[test]
    fn uneven_rounds_still_measure_the_rate_between_last_ticks() {
        let mut w = RateWindow::default();
        assert_eq!(w.round(1, 0, 10), 0);
        // 7 ticks at 250 Hz, round at an arbitrary moment after the last one.
        assert_eq!(w.round(8, 7 * 4_000, 7 * 4_000 + 1_234), 250_000);
        // 1 tick 4 ms later.
        assert_eq!(w.round(9, 8 * 4_000, 8 * 4_000 + 10), 250_000);
    }

    #[test]
    fn holds_through_a_quiet_round_then_resets_after_three_periods() {
        let mut w = RateWindow::default();
        let (r, n, last) = ticking(&mut w, 0, S / 2, 3); // 2 Hz
        assert_eq!(r[2], 2_000);
        // No tick since: 1.4 s after the last one is within 3 periods (1.5 s): held.
        assert_eq!(w.round(n, last, last + 1_400_000), 2_000);
        // 1.6 s: beyond, reset.
        assert_eq!(w.round(n, last, last + 1_600_000), 0);
        assert_eq!(w.round(n, last, last + 5 * S), 0);
        // Ticks again: the window reopens, the rate shows from the round after.
        assert_eq!(w.round(n + 1, last + 6 * S, last + 6 * S), 0);
        assert_eq!(w.round(n + 3, last + 7 * S, last + 7 * S), 2_000);
    }

    #[test]
    fn a_tick_clock_going_back_restarts_the_window() {
        let mut w = RateWindow::default();
        w.round(1, 10 * S, 10 * S);
        assert_eq!(w.round(11, 11 * S, 11 * S), 10_000);
        // Ticks from a host whose clock is 5 s behind: no figure from a negative span...
        assert_eq!(w.round(21, 7 * S, 12 * S), 10_000);
        // ...and the next round measures from there, not from the old base.
        assert_eq!(w.round(31, 8 * S, 13 * S), 10_000);
    }

    #[test]
    fn absurd_rates_saturate_and_equal_times_do_not_divide_by_zero() {
        let mut w = RateWindow::default();
        assert_eq!(w.round(1, 100, 100), 0);
        assert_eq!(w.round(5, 100, 100), 0, "no time passed between the ticks: no new figure");
        assert_eq!(w.round(u64::MAX / 2, 101, 101), i32::MAX);
    }

    #[test]
    fn latency_matches_ecal_definitions() {
        let mut l = LatencyStats::default();
        let d = l.to_pb();
        assert_eq!((d.count, d.min, d.max), (0, f64::INFINITY, f64::NEG_INFINITY));
        for v in [10.0, 20.0, 30.0, 40.0] {
            l.add(v);
        }
        let s = l.to_pb();
        assert_eq!((s.count, s.latest, s.min, s.max, s.mean), (4, 40.0, 10.0, 40.0, 25.0));
        // M2 = sum of squared deviations from the mean: 225 + 25 + 25 + 225.
        assert!((s.variance - 500.0).abs() < 1e-9);
        assert!((l.sample_variance() - 500.0 / 3.0).abs() < 1e-9);
    }
}
