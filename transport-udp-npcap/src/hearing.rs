//! Does the capture hear what this node sends? A capture on the wrong adapter, a filter that
//! never matches, a library that returns no frames (Wine's wpcap with a negative dispatch count,
//! an Npcap update that changed loopback capture: eclipse-ecal/ecal#174) all look the same
//! from inside: nothing arrives, and a node on them would silently receive nothing. The node's
//! own registration goes to the group and port its capture listens to, every refresh period, so
//! a working capture hears it within milliseconds. [`SelfHearing`] watches for that:
//!
//! - the capture thread calls [`SelfHearing::on_datagram`] for every datagram of the channel;
//!   one from this host (a loopback or local address) and the channel's own sending port is
//!   the node's own;
//! - the sending thread calls [`SelfHearing::on_sent`] right before every send (so an echo that
//!   overtakes the sending thread still clears it); once sends have gone unheard for
//!   [`deaf_after`] (three registration periods, at least 3 s; at least two sends), the capture
//!   is *deaf*: logged at error
//!   level with what to check, repeated with a doubling interval (up to 5 min), visible in the
//!   channel's stats (`capture_deaf`, `capture_deaf_events`, `self_heard`); hearing again is
//!   logged once at info level.
//!
//! Only channels whose sends the capture is meant to hear are checked: the registration channel
//! (it sends every refresh period and always receives), with multicast loopback on (with it off
//! the capture deliberately ignores this host's frames) and, in network mode, a TTL above 0
//! (with 0 nothing reaches the device). Hearing itself proves that the device and the library
//! deliver frames, not that other hosts' traffic reaches the device (switches, routes): the
//! `peers` check of `mwctl doctor` covers that.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long sends may go unheard before the capture counts as deaf: three registration periods,
/// at least 3 s.
pub fn deaf_after(registration_refresh: Duration) -> Duration {
    (registration_refresh * 3).max(Duration::from_secs(3))
}

/// At most this often a source address not yet known as local is checked (a bind to it).
const LOCAL_CHECK_EVERY_MS: u64 = 100;
const LOG_FIRST_INTERVAL: Duration = Duration::from_secs(10);
const LOG_MAX_INTERVAL: Duration = Duration::from_secs(300);
const NONE: u64 = u64::MAX;

/// The watch of one channel. Lock-free on both threads except the rare logging decision.
#[derive(Debug)]
pub struct SelfHearing {
    checked: bool,
    deaf_after: Duration,
    epoch: Instant,
    /// The sending socket's local port once known (0: not yet).
    port: AtomicU32,
    /// Addresses of this host seen as sources of our own datagrams (besides loopback), learned
    /// by binding a socket to them (only a local address binds): follows address changes.
    local: Mutex<Vec<std::net::Ipv4Addr>>,
    /// When (ms since `epoch`) an unknown address was last checked; `NONE`: never.
    last_local_check: AtomicU64,
    heard: AtomicU64,
    /// When (ms since `epoch`) the first send not yet followed by hearing one went out.
    unheard_since: AtomicU64,
    unheard_sends: AtomicU64,
    deaf: AtomicBool,
    deaf_events: AtomicU64,
    /// Next time an error line may be logged, and the interval after it.
    log: Mutex<(Option<Instant>, Duration)>,
    /// Where the capture listens, for the messages.
    what: String,
}

/// What [`SelfHearing::on_sent`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The capture heard this process's own datagrams recently enough (or it is too early to tell).
    Fine,
    /// Deaf; `log` says whether to log now (backoff), `first` whether it just became so.
    Deaf {
        /// How long since the capture last heard one of this process's own sends.
        unheard_for: Duration,
        /// Own sends since then.
        sends: u64,
        /// Whether to log now (the error is logged with a growing interval).
        log: bool,
        /// Whether the capture just became deaf (counted once per episode).
        first: bool,
    },
}

impl SelfHearing {
    /// `checked`: whether this channel's sends should be heard (see the module notes);
    /// `deaf_after`: [`deaf_after`] of the registration period; `port`: the sending socket's
    /// local port if known; `what`: where the capture listens (for messages).
    pub fn new(checked: bool, deaf_after: Duration, port: Option<u16>, what: String, now: Instant) -> Self {
        Self {
            checked,
            deaf_after,
            epoch: now,
            port: AtomicU32::new(port.map_or(0, u32::from)),
            local: Mutex::new(Vec::new()),
            last_local_check: AtomicU64::new(NONE),
            heard: AtomicU64::new(0),
            unheard_since: AtomicU64::new(NONE),
            unheard_sends: AtomicU64::new(0),
            deaf: AtomicBool::new(false),
            deaf_events: AtomicU64::new(0),
            log: Mutex::new((None, LOG_FIRST_INTERVAL)),
            what,
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Whether this channel is checked at all.
    pub fn checked(&self) -> bool {
        self.checked
    }

    /// Whether the sending port is known (then [`SelfHearing::on_sent`] needs no port).
    pub fn port_known(&self) -> bool {
        self.port.load(Ordering::Relaxed) != 0
    }

    /// The capture thread, for every datagram routed to this channel.
    pub fn on_datagram(&self, source: SocketAddr) {
        let port = self.port.load(Ordering::Relaxed);
        if port == 0 || u32::from(source.port()) != port {
            return;
        }
        let own = match source.ip() {
            IpAddr::V4(ip) => ip.is_loopback() || self.is_local(ip),
            IpAddr::V6(_) => false,
        };
        if !own {
            return;
        }
        self.heard.fetch_add(1, Ordering::Relaxed);
        self.unheard_sends.store(0, Ordering::Relaxed);
        self.unheard_since.store(NONE, Ordering::Relaxed);
        if self.deaf.swap(false, Ordering::Relaxed) {
            tracing::info!(capture = %self.what, "the capture hears this node's own datagrams again");
            *self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = (None, LOG_FIRST_INTERVAL);
        }
    }

    /// Whether `ip` is one of this host's addresses: known, or (at most every 100 ms, so a
    /// sender spoofing our port costs little) a socket can bind to it.
    fn is_local(&self, ip: std::net::Ipv4Addr) -> bool {
        let mut known = self.local.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if known.contains(&ip) {
            return true;
        }
        let now = self.ms(Instant::now());
        let last = self.last_local_check.load(Ordering::Relaxed);
        if last != NONE && now.saturating_sub(last) < LOCAL_CHECK_EVERY_MS {
            return false;
        }
        self.last_local_check.store(now, Ordering::Relaxed);
        let local = std::net::UdpSocket::bind((ip, 0)).is_ok();
        if local && known.len() < 64 {
            known.push(ip);
        }
        local
    }

    /// The sending thread, right before a datagram goes out from local port `port` (when
    /// known).
    pub fn on_sent(&self, port: Option<u16>, now: Instant) -> Verdict {
        if !self.checked {
            return Verdict::Fine;
        }
        if let Some(p) = port {
            self.port.store(u32::from(p), Ordering::Relaxed);
        }
        let t = self.ms(now);
        let _ = self.unheard_since.compare_exchange(NONE, t, Ordering::Relaxed, Ordering::Relaxed);
        let sends = self.unheard_sends.fetch_add(1, Ordering::Relaxed) + 1;
        let since = self.unheard_since.load(Ordering::Relaxed);
        if since == NONE || sends < 2 {
            return Verdict::Fine;
        }
        let unheard_for = Duration::from_millis(t.saturating_sub(since));
        if unheard_for < self.deaf_after {
            return Verdict::Fine;
        }
        let first = !self.deaf.swap(true, Ordering::Relaxed);
        if first {
            self.deaf_events.fetch_add(1, Ordering::Relaxed);
        }
        let mut log = self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = log.0.is_none_or(|next| now >= next);
        if due {
            let interval = log.1;
            *log = (Some(now + interval), (interval * 2).min(LOG_MAX_INTERVAL));
        }
        Verdict::Deaf { unheard_for, sends, log: due, first }
    }

    /// Own datagrams the capture heard (`self_heard`).
    pub fn heard(&self) -> u64 {
        self.heard.load(Ordering::Relaxed)
    }

    /// The capture is deaf now (`capture_deaf`).
    pub fn is_deaf(&self) -> bool {
        self.deaf.load(Ordering::Relaxed)
    }

    /// Times the capture became deaf (`capture_deaf_events`).
    pub fn deaf_events(&self) -> u64 {
        self.deaf_events.load(Ordering::Relaxed)
    }

    /// The error message for a deaf capture: what is wrong and what to check.
    pub fn complaint(&self, unheard_for: Duration, sends: u64) -> String {
        format!(
            "the packet capture on {} has not heard this node's own registration for {:.0} s ({sends} datagrams sent): \
             it most likely receives nothing from anyone. Check that the capture device is the one the traffic crosses \
             (network.interface / npcap.interfaces; `mwctl doctor` lists the devices), that the capture library \
             delivers frames (on Windows: Npcap with \"Support loopback traffic\" for local mode), or use \
             transport = socket",
            self.what,
            unheard_for.as_secs_f64(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn a_capture_that_hears_its_sends_is_fine_and_counts_them() {
        let t0 = Instant::now();
        let h = SelfHearing::new(true, deaf_after(Duration::from_secs(1)), Some(40_000), "lo".into(), t0);
        for k in 0..10 {
            assert_eq!(h.on_sent(None, at(t0, k * 1000)), Verdict::Fine);
            h.on_datagram("127.0.0.1:40000".parse().unwrap());
        }
        assert_eq!((h.heard(), h.is_deaf(), h.deaf_events()), (10, false, 0));
    }

    #[test]
    fn others_datagrams_do_not_count_as_our_own() {
        let t0 = Instant::now();
        let h = SelfHearing::new(true, deaf_after(Duration::from_secs(1)), None, "eth0".into(), t0);
        h.on_datagram("127.0.0.1:40000".parse().unwrap()); // port not known yet
        h.on_sent(Some(40_000), t0);
        // Another host with the same port number: 192.0.2.1 (TEST-NET-1) is no local address.
        h.on_datagram("192.0.2.1:40000".parse().unwrap());
        h.on_datagram("127.0.0.1:40001".parse().unwrap()); // this host, another socket
        assert_eq!(h.heard(), 0);
        h.on_datagram("127.0.0.1:40000".parse().unwrap());
        assert_eq!(h.heard(), 1);
        // A local address that is not loopback is learned by binding to it.
        let own = std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| {
                s.connect("192.0.2.1:9")?;
                s.local_addr()
            })
            .ok()
            .and_then(|a| match a.ip() {
                IpAddr::V4(ip) if !ip.is_unspecified() && !ip.is_loopback() => Some(ip),
                _ => None,
            });
        if let Some(ip) = own {
            // Unknown addresses are checked at most every 100 ms (192.0.2.1 just was).
            h.on_datagram(SocketAddr::new(IpAddr::V4(ip), 40_000));
            assert_eq!(h.heard(), 1, "within 100 ms of the last check: not checked, not counted");
            std::thread::sleep(Duration::from_millis(LOCAL_CHECK_EVERY_MS + 10));
            h.on_datagram(SocketAddr::new(IpAddr::V4(ip), 40_000));
            assert_eq!(h.heard(), 2, "{ip} is this host's");
        }
    }

    #[test]
    fn sends_unheard_for_three_seconds_make_it_deaf_logged_with_backoff_until_heard_again() {
        let t0 = Instant::now();
        let h = SelfHearing::new(true, deaf_after(Duration::from_secs(1)), Some(1), "lo".into(), t0);
        let mut logged = Vec::new();
        for s in 0..=600u64 {
            match h.on_sent(Some(1), at(t0, s * 1000)) {
                Verdict::Fine => assert!(s < 3, "deaf only after 3 s, at {s}"),
                Verdict::Deaf { log, first, unheard_for, sends } => {
                    assert_eq!((first, unheard_for, sends), (s == 3, Duration::from_secs(s), s + 1));
                    if log {
                        logged.push(s);
                    }
                }
            }
        }
        // First at once, then after 10, 20, 40, ... s, at most every 5 min.
        assert_eq!(logged, vec![3, 13, 33, 73, 153, 313]);
        assert!(h.is_deaf() && h.deaf_events() == 1);
        h.on_datagram("127.0.0.1:1".parse().unwrap());
        assert!(!h.is_deaf());
        assert_eq!(h.on_sent(Some(1), at(t0, 601_000)), Verdict::Fine);
        // Deaf again later: counted again, logged at once again.
        let mut v = Verdict::Fine;
        for s in 602..=604 {
            v = h.on_sent(Some(1), at(t0, s * 1000));
        }
        assert!(matches!(v, Verdict::Deaf { log: true, first: true, .. }), "{v:?}");
        assert_eq!(h.deaf_events(), 2);
    }

    #[test]
    fn an_echo_that_overtakes_the_sender_still_counts() {
        // on_sent runs before the send: an echo handled at once clears that very send.
        let t0 = Instant::now();
        let h = SelfHearing::new(true, deaf_after(Duration::from_secs(5)), Some(7), "lo".into(), t0);
        for k in 0..10 {
            assert_eq!(h.on_sent(None, at(t0, k * 5000)), Verdict::Fine, "round {k}");
            h.on_datagram("127.0.0.1:7".parse().unwrap());
        }
        assert_eq!(deaf_after(Duration::from_secs(5)), Duration::from_secs(15));
        assert_eq!(deaf_after(Duration::from_millis(100)), Duration::from_secs(3));
    }

    #[test]
    fn one_send_alone_or_an_unchecked_channel_is_never_deaf() {
        let t0 = Instant::now();
        let h = SelfHearing::new(true, deaf_after(Duration::from_secs(1)), Some(1), "lo".into(), t0);
        assert_eq!(h.on_sent(Some(1), t0), Verdict::Fine);
        let off = SelfHearing::new(false, deaf_after(Duration::from_secs(1)), Some(1), "lo".into(), t0);
        for s in 0..10 {
            assert_eq!(off.on_sent(Some(1), at(t0, s * 1000)), Verdict::Fine);
        }
        assert!(!off.is_deaf());
    }
}
