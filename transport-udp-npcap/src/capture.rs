//! Owns the capture handles: one receive thread per capture device, handing each datagram to
//! the sink of the channel bound to its port, on that thread (no queue, no thread hop).

use crate::config::NpcapConfig;
use crate::demux::{Delivery, Demux, DemuxStats, Route};
use crate::filter::bpf;
use crate::frame::LinkType;
use crate::ip_reassembly::IpReassemblyStats;
use crate::libpcap::{Direction, Handle, Library, LiveOptions, OpenError};
use middleware_core::transport::{ReceiveThread, SinkSlot, TransportError, TICK};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

/// What the receive threads deliver to, shared with the transports.
#[derive(Debug, Default)]
pub struct Routes {
    /// Destination port -> the sink of the channel bound to it.
    pub ports: RwLock<HashMap<u16, Arc<SinkSlot>>>,
    /// Destination addresses accepted (joined groups, or the broadcast address).
    pub destinations: RwLock<Vec<Ipv4Addr>>,
    /// Set when ports or destinations change: the threads recompile their filters.
    pub generation: AtomicU64,
    /// The range of topic groups (network, mask) the filter passes as a whole, so that joining
    /// a topic's group does not change it (network mode with eCAL's v2 mapping); which groups
    /// are joined is checked per frame against `destinations`.
    pub topic_range: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Per capture thread, the generation it has applied (filter installed, routes copied).
    applied: Mutex<Vec<u64>>,
    applied_changed: Condvar,
}

/// The longest [`Capture::apply`] waits for a capture thread to take new routes (it is back in
/// its loop within about 100 ms unless a callback on it takes long).
const APPLY_WAIT: Duration = Duration::from_secs(2);

impl Routes {
    /// No ports or destinations yet; `topic_range` as [`Routes::topic_range`].
    pub fn new(topic_range: Option<(Ipv4Addr, Ipv4Addr)>) -> Self {
        Self { topic_range, ..Self::default() }
    }

    /// A copy of the routes for one capture thread, which takes a new one when `generation`
    /// changes: no lock per datagram. A port removed meanwhile may still get a datagram or a
    /// tick from a thread's older copy, until the thread's next pass: its slot is closed by
    /// then, so nothing reaches the sink.
    fn snapshot(&self) -> RouteSnapshot {
        RouteSnapshot {
            destinations: read(&self.destinations).clone(),
            ports: read(&self.ports).iter().map(|(p, s)| (*p, Arc::clone(s))).collect(),
        }
    }

    /// Bumps the generation after a change of ports or destinations.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Called by capture thread `index` once it has applied generation `g`.
    fn applied(&self, index: usize, g: u64) {
        let mut a = self.applied.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(x) = a.get_mut(index) {
            *x = g;
        }
        drop(a);
        self.applied_changed.notify_all();
    }

    /// Waits until every capture thread has applied generation `g`, at most `max`. Returns the
    /// threads that had not.
    fn wait_applied(&self, g: u64, max: Duration) -> Vec<usize> {
        let late = |a: &Vec<u64>| a.iter().enumerate().filter(|(_, x)| **x < g).map(|(i, _)| i).collect::<Vec<_>>();
        let a = self.applied.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (a, _) = self
            .applied_changed
            .wait_timeout_while(a, max, |a| !late(a).is_empty())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        late(&a)
    }

    /// The BPF filter expression for the destinations and ports routed now (UDP to those groups and
    /// ports, IPv4 fragments included).
    pub fn filter(&self) -> String {
        let d = read(&self.destinations).clone();
        let mut p: Vec<u16> = read(&self.ports).keys().copied().collect();
        p.sort_unstable();
        bpf(&d, self.topic_range, &p)
    }
}

pub(crate) fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A capture thread's copy of [`Routes`] (a handful of entries: linear search).
#[derive(Default)]
struct RouteSnapshot {
    destinations: Vec<Ipv4Addr>,
    ports: Vec<(u16, Arc<SinkSlot>)>,
}

impl RouteSnapshot {
    fn sink(&self, port: u16) -> Option<&Arc<SinkSlot>> {
        self.ports.iter().find(|(p, _)| *p == port).map(|(_, s)| s)
    }

    fn wanted(&self, d: SocketAddrV4) -> bool {
        self.destinations.contains(d.ip()) && self.sink(d.port()).is_some()
    }
}

/// The routes as the demultiplexer uses them. Sinks run with no lock held (the routes are the
/// thread's copy); a closed slot drops what it is handed (a lease with it: its receiver is
/// closed too).
struct Routing<'a> {
    snapshot: &'a RouteSnapshot,
}

impl Route for Routing<'_> {
    fn wanted(&self, destination: SocketAddrV4) -> bool {
        self.snapshot.wanted(destination)
    }

    fn wanted_address(&self, address: Ipv4Addr) -> bool {
        self.snapshot.destinations.contains(&address)
    }

    fn deliver(&mut self, d: Delivery<'_>, now: Instant) {
        if let Some(sink) = self.snapshot.sink(d.destination.port()) {
            sink.with(|s| s.datagram(d.payload, d.source, now));
        }
    }

    fn begin(
        &mut self,
        source: SocketAddr,
        destination: SocketAddrV4,
        first: &[u8],
        len: usize,
        now: Instant,
    ) -> Option<middleware_core::DatagramLease> {
        let sink = self.snapshot.sink(destination.port())?;
        let mut lease = None;
        sink.with(|s| lease = s.begin_datagram(first, len, source, now));
        lease
    }

    fn finish(&mut self, destination: SocketAddrV4, lease: middleware_core::DatagramLease, now: Instant) {
        if let Some(sink) = self.snapshot.sink(destination.port()) {
            sink.with(|s| s.finish_datagram(lease, now));
        }
    }

    fn abort(&mut self, destination: SocketAddrV4, lease: middleware_core::DatagramLease, out: &mut Vec<u8>) -> bool {
        let mut kept = false;
        if let Some(sink) = self.snapshot.sink(destination.port()) {
            sink.with(|s| kept = s.abort_datagram(lease, Some(out)));
        }
        kept
    }

    fn release(&mut self, destination: SocketAddrV4, lease: middleware_core::DatagramLease) {
        if let Some(sink) = self.snapshot.sink(destination.port()) {
            sink.with(|s| {
                s.abort_datagram(lease, None);
            });
        }
    }
}

/// One frame as captured, before decoding: what a recorder writes to a pcapng file.
#[derive(Debug, Clone, Copy)]
pub struct CapturedFrame<'a> {
    /// The capture device the frame came from.
    pub device: &'a str,
    /// The device's link type (pcap DLT / LINKTYPE value).
    pub link_type: i32,
    /// Capture time, µs since the Unix epoch.
    pub timestamp_us: i64,
    /// Length on the wire (`data` may be shorter: snaplen).
    pub original_len: u32,
    /// The captured bytes, link-layer header included.
    pub data: &'a [u8],
}

/// Sees every frame that passed the kernel filter (the ports a node listens on, at its groups or, in
/// network mode, anywhere in its range of topic groups).
pub type FrameTap = Arc<dyn Fn(&CapturedFrame<'_>) + Send + Sync>;

/// Counters of one device, updated by its thread.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct DeviceStats {
    /// The capture device.
    pub device: String,
    /// Frame decoding and UDP demultiplexing counters.
    pub demux: DemuxStats,
    /// IPv4 fragment reassembly counters.
    pub ip: IpReassemblyStats,
    /// pcap `ps_recv`, `ps_drop`, `ps_ifdrop`.
    pub pcap_received: u64,
    /// Frames the kernel dropped because the capture buffer (`npcap.buffer_size`) was full: lost.
    pub pcap_dropped: u64,
    /// Frames the interface or its driver dropped (not all platforms report it).
    pub pcap_if_dropped: u64,
    /// Kernel filter updates installed (a new group or port joined).
    pub filter_updates: u64,
    /// Kernel filter updates refused (the first of each spell logged, and every 100th; every
    /// frame is captured meanwhile, and the filter tried again each second).
    pub filter_errors: u64,
    /// Failed capture reads (the first and every 1000th is logged; capturing goes on).
    pub read_errors: u64,
    /// Frames whose processing panicked (a defect; the panic was caught, the other frames of
    /// their batch were processed and capturing went on).
    pub panics: u64,
    /// Panics caught in the frame tap (`with_frame_tap`: user code, as `mwctl record`); the
    /// frame was received all the same.
    pub tap_panics: u64,
}

/// The running capture on one or more devices.
pub struct Capture {
    threads: Vec<ReceiveThread>,
    /// Per thread, what wakes it out of its wait for frames.
    wakeups: Vec<Arc<crate::sys::Wakeup>>,
    devices: Vec<String>,
    /// Per device, its counters (updated by its thread about every 100 ms).
    pub stats: Vec<Arc<Mutex<DeviceStats>>>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture").field("devices", &self.stats.len()).finish()
    }
}

pub(crate) fn unavailable(device: &str, e: &OpenError) -> TransportError {
    match e {
        OpenError::PermissionDenied(text) => TransportError::Unavailable(format!(
            "no permission to capture on `{device}` ({text}); run as root or grant the program the \
             capabilities: `sudo setcap cap_net_raw,cap_net_admin=eip <path to the binary>`"
        )),
        OpenError::InterfaceDown(text) => TransportError::Unavailable(format!(
            "capture device `{device}` is down ({text}); bring it up (`ip link set {device} up`)"
        )),
        OpenError::NoSuchDevice(text) => TransportError::Unavailable(format!(
            "no capture device `{device}` ({text}); list them with `mwctl doctor` and set npcap.interfaces"
        )),
        OpenError::Other(text) => TransportError::Unavailable(format!("cannot open capture device `{device}`: {text}")),
    }
}

/// The live-capture options of a configuration.
pub(crate) fn live_options(cfg: &NpcapConfig) -> LiveOptions {
    LiveOptions {
        snaplen: cfg.snaplen as i32,
        buffer_size: crate::sys::kernel_buffer_size(cfg.buffer_size).min(i32::MAX as usize) as i32,
        timeout_ms: cfg.timeout_ms as i32,
        immediate: cfg.immediate,
    }
}

impl Capture {
    /// Opens every device and starts its thread.
    ///
    /// # Errors
    /// A device cannot be opened (missing, no permission, unsupported link type).
    /// `devices` are (name, is loopback). `hear_own_host`: decode frames this host sends (multicast
    /// loopback semantics).
    pub fn start(
        lib: &'static Library,
        devices: &[(String, bool)],
        cfg: &NpcapConfig,
        routes: Arc<Routes>,
        hear_own_host: bool,
        tap: Option<FrameTap>,
    ) -> Result<Self, TransportError> {
        let mut me = Self { threads: Vec::new(), wakeups: Vec::new(), devices: Vec::new(), stats: Vec::new() };
        // `npcap.spin_us` applies to immediate mode, where reads do not block.
        let spin = (cfg.immediate && crate::sys::NONBLOCKING_READS && cfg.spin_us > 0)
            .then(|| Duration::from_micros(u64::from(cfg.spin_us)));
        // The longest a frame may wait in a partly filled buffer before a read (where the
        // platform's wait needs to be told: Windows); immediate mode hands over every frame.
        let latency =
            if cfg.immediate { Duration::from_millis(100) } else { Duration::from_millis(cfg.timeout_ms.into()) };
        for (dev, loopback) in devices {
            let mut cap = Handle::open_live(lib, dev, live_options(cfg)).map_err(|e| unavailable(dev, &e))?;
            let dlt = cap.datalink();
            let link = LinkType::from_dlt(dlt).ok_or_else(|| {
                TransportError::Unavailable(format!(
                    "capture device `{dev}` has link type {dlt}, which is not supported"
                ))
            })?;
            // Which copies to decode, so that every datagram is decoded exactly once:
            // * loopback devices show each frame twice (sent, then received): incoming only;
            // * other devices show frames from other hosts as incoming and this host's own as
            //   outgoing only (Linux never shows the multicast loopback copy to packet sockets),
            //   so same-host peers are heard by also taking outgoing frames, unless
            //   network.multicast_loopback is off.
            let direction = if *loopback || !hear_own_host { Direction::In } else { Direction::InOut };
            if let Err(e) = cap.set_direction(direction) {
                tracing::warn!(device = %dev, error = %e, ?direction, "cannot set the capture direction");
            }
            // Each thread reports the routes it has applied (`Capture::apply` waits for that).
            let index = me.threads.len();
            {
                let mut a = routes.applied.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                a.resize(index + 1, routes.generation.load(Ordering::Acquire));
            }
            let filter = routes.filter();
            cap.set_filter(&filter)
                .map_err(|e| TransportError::Unavailable(format!("cannot set the capture filter on `{dev}`: {e}")))?;
            let wakeup = Arc::new(crate::sys::Wakeup::new().map_err(|e| TransportError::io("capture wake-up", e))?);
            // The thread must notice filter changes and shutdown even when no frame arrives.
            let min_to_copy = (!cfg.immediate).then_some(cfg.min_to_copy);
            crate::sys::prepare_reads(&mut cap, min_to_copy).map_err(|e| unavailable(dev, &OpenError::Other(e)))?;
            let stats = Arc::new(Mutex::new(DeviceStats { device: dev.clone(), ..Default::default() }));
            me.stats.push(Arc::clone(&stats));
            let (routes, ipc) = (Arc::clone(&routes), cfg.ip.clone());
            let name = dev.clone();
            let tap = tap.clone();
            let wake = Arc::clone(&wakeup);
            let applied = Applied::new(index, filter);
            let t = ReceiveThread::spawn(format!("mw-pcap-{dev}"), move |stop| {
                run(
                    cap,
                    (link, dlt),
                    ipc,
                    (spin, latency),
                    (&routes, applied, &wake),
                    stop,
                    &stats,
                    &name,
                    tap.as_ref(),
                );
            })
            .map_err(|e| TransportError::io("spawn capture thread", e))?;
            me.threads.push(t);
            me.wakeups.push(wakeup);
            me.devices.push(dev.clone());
            tracing::info!(device = %dev, ?link, immediate = cfg.immediate, timeout_ms = cfg.timeout_ms, buffer = cfg.buffer_size, "capture started");
        }
        Ok(me)
    }
}

impl Capture {
    /// Waits until every capture thread has applied `routes` as they are now (this caller's
    /// change and any other still in flight), waking them first: a datagram sent after a
    /// subscriber exists is captured (a frame arriving before the kernel filter takes its port
    /// is dropped by the kernel, unseen). Instant when nothing changed; bounded by `APPLY_WAIT`.
    /// A capture thread calling this (a callback creating a subscriber) cannot wait for itself:
    /// its routes apply once the callback returns.
    pub fn apply(&self, routes: &Routes) {
        let g = routes.generation.load(Ordering::Acquire);
        if self.threads.iter().any(ReceiveThread::is_current) || routes.wait_applied(g, Duration::ZERO).is_empty() {
            return;
        }
        for w in &self.wakeups {
            w.wake();
        }
        let late = routes.wait_applied(g, APPLY_WAIT);
        for i in late {
            tracing::warn!(device = %self.devices[i], waited_ms = APPLY_WAIT.as_millis() as u64,
                "the capture thread has not applied new routes yet (busy in a callback?); frames for the new \
                 port or group are missed until it does");
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // Joins each thread, except the one running this (a callback that dropped the last
        // transport of its node): that one ends when it is back in its loop. Woken first, so
        // that none sits out its wait for frames.
        for t in &self.threads {
            t.signal_stop();
        }
        for w in &self.wakeups {
            w.wake();
        }
        // One bound for all of them, not one each.
        let deadline = Instant::now() + middleware_core::transport::CLOSE_WAIT;
        for t in &self.threads {
            t.stop_within(deadline.saturating_duration_since(Instant::now()));
        }
    }
}

/// 64-bit totals of pcap's wrapping 32-bit counters, from successive readings.
#[derive(Debug, Default)]
struct WideStats {
    last: crate::libpcap::Stats,
    total: [u64; 3],
}

impl WideStats {
    fn update(&mut self, now: crate::libpcap::Stats) {
        let (a, b) = (
            [now.received, now.dropped, now.if_dropped],
            [self.last.received, self.last.dropped, self.last.if_dropped],
        );
        for i in 0..3 {
            self.total[i] += u64::from(a[i].wrapping_sub(b[i]));
        }
        self.last = now;
    }

    fn totals(&self) -> (u64, u64, u64) {
        (self.total[0], self.total[1], self.total[2])
    }
}

/// Immediate mode spins for the next fragment only while at most this many IPv4 datagrams are
/// incomplete (a few senders' datagrams in flight; a fragment flood leaves hundreds).
const SPIN_MAX_PARTIALS: usize = 4;
/// The longest one pass of the capture loop keeps reading without going back to its top.
const SPIN_PASS_MAX: Duration = Duration::from_millis(5);

/// What a capture thread does with its kernel filter (a trait so that a test can refuse).
trait FilterTarget {
    fn set_filter(&mut self, text: &str) -> Result<(), String>;
}

impl FilterTarget for Handle {
    fn set_filter(&mut self, text: &str) -> Result<(), String> {
        Handle::set_filter(self, text)
    }
}

/// The filter that passes every frame (an empty expression): what goes in when the wanted one
/// is refused, so that frames for new routes are captured all the same; user space drops and
/// counts what nobody wants.
const PASS_ALL: &str = "";
/// How long after a refused filter it is tried again (the refusal may be passing: memory).
const FILTER_RETRY: Duration = Duration::from_secs(1);

/// A capture thread's index among the threads, and the filter it has installed (installed again
/// only when its text changes: libpcap on Linux drops every frame for a moment while it swaps
/// filters).
struct Applied {
    index: usize,
    filter: String,
    /// When a refused filter is tried again.
    retry_at: Option<Instant>,
    updates: u64,
    errors: u64,
}

impl Applied {
    fn new(index: usize, filter: String) -> Self {
        Self { index, filter, retry_at: None, updates: 0, errors: 0 }
    }

    /// Installs `wanted` unless it is in already. A refusal (libpcap cannot compile it, the
    /// kernel will not take it) is counted and logged, the filter that passes everything goes in
    /// instead (a new port's frames must not be dropped by the kernel unseen), and `wanted` is
    /// tried again [`FILTER_RETRY`] later ([`Applied::retry_due`]).
    fn install(&mut self, cap: &mut impl FilterTarget, wanted: String, device: &str, now: Instant) {
        if wanted == self.filter {
            self.retry_at = None;
            return;
        }
        match cap.set_filter(&wanted) {
            Ok(()) => {
                self.updates += 1;
                if self.retry_at.take().is_some() {
                    tracing::info!(%device, filter = %wanted, "capture filter installed after all");
                }
                self.filter = wanted;
            }
            Err(e) => {
                self.errors += 1;
                // The first refusal of a spell is logged, and every 100th.
                let new_spell = self.retry_at.replace(now + FILTER_RETRY).is_none();
                let passing_all = self.filter == PASS_ALL || cap.set_filter(PASS_ALL).is_ok();
                if passing_all {
                    self.filter = PASS_ALL.to_string();
                }
                // `%`, not `is_multiple_of`: the Windows build check's Debian Rust 1.85 lacks it.
                if new_spell || self.errors % 100 == 0 {
                    if passing_all {
                        tracing::warn!(%device, error = %e, count = self.errors,
                            "updating the capture filter failed; capturing every frame until it can be installed \
                             (tried again each second)");
                    } else {
                        tracing::error!(%device, error = %e, count = self.errors,
                            "updating the capture filter failed, and so did passing every frame: frames for new \
                             ports or groups are missed until it can be installed (tried again each second)");
                    }
                }
            }
        }
    }

    fn retry_due(&self, now: Instant) -> bool {
        self.retry_at.is_some_and(|t| now >= t)
    }
}

/// Whether the `n`th occurrence of a repeated error is logged: the first and every 1000th.
fn log_now(n: u64) -> bool {
    n == 1 || n % 1000 == 0 // not `is_multiple_of`: Rust 1.85 (the Windows build check) lacks it
}

#[allow(clippy::too_many_arguments)]
fn run(
    mut cap: Handle,
    (link, dlt): (LinkType, i32),
    ip: crate::ip_reassembly::IpReassemblyConfig,
    (spin, latency): (Option<Duration>, Duration),
    (routes, mut applied, wake): (&Routes, Applied, &crate::sys::Wakeup),
    stop: &AtomicBool,
    stats: &Mutex<DeviceStats>,
    device: &str,
    tap: Option<&FrameTap>,
) {
    // However this thread ends, nobody waits for it to apply routes any more.
    struct Done<'a>(&'a Routes, usize, &'a str);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                tracing::error!(device = %self.2, "capture thread ended by a panic: this device is no longer captured");
            }
            self.0.applied(self.1, u64::MAX);
        }
    }
    let _done = Done(routes, applied.index, device);
    let mut demux = Demux::new(link, ip);
    // Routes may change between the handle's first filter and this thread's start: the first
    // pass always takes the current routes (and installs the filter if it changed meanwhile).
    let mut generation = None;
    let mut snapshot = RouteSnapshot::default();
    let mut last_stats = Instant::now();
    let mut read_errors = 0u64;
    // pcap's counters are 32-bit and wrap (4 G frames is hours at line rate): widen them.
    let mut counters = WideStats::default();
    let mut last_tick = Instant::now();
    // Reads that ended in a panic (for the log's pace), panics outside the frame callback, and
    // panics of the frame tap.
    let (panic_batches, other_panics, tap_panics) =
        (std::cell::Cell::new(0u64), std::cell::Cell::new(0u64), std::cell::Cell::new(0u64));
    while !stop.load(Ordering::Relaxed) {
        let g = routes.generation.load(Ordering::Acquire);
        if generation != Some(g) || applied.retry_due(Instant::now()) {
            generation = Some(g);
            snapshot = routes.snapshot();
            applied.install(&mut cap, routes.filter(), device, Instant::now());
            // Reported even when installing failed (counted, logged, retried): waiters must not
            // hang on it.
            routes.applied(applied.index, g);
        }
        let read = |cap: &mut Handle, demux: &mut Demux| {
            let now = Instant::now();
            cap.dispatch(|pkt| {
                if let Some(tap) = tap {
                    let frame = CapturedFrame {
                        device,
                        link_type: dlt,
                        timestamp_us: pkt.timestamp_us,
                        original_len: pkt.original_len,
                        data: pkt.data,
                    };
                    // User code: its panic is caught and counted, and the frame still received.
                    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tap(&frame))) {
                        let n = tap_panics.get() + 1;
                        tap_panics.set(n);
                        if log_now(n) {
                            tracing::error!(%device, panic = %middleware_core::transport::panic_message(&*p), count = n,
                                "panic in the frame tap caught; the frame is received all the same");
                        }
                    }
                }
                demux.on_frame_to(now, pkt.data, &mut Routing { snapshot: &snapshot });
            })
        };
        // A panic in the frame path (a defect: sinks catch their own) must not end capturing
        // for good: caught, counted, logged, and the loop goes on (as a read of no frame).
        let read = |cap: &mut Handle, demux: &mut Demux| {
            let before = cap.panicked_frames();
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(cap, demux))) {
                Ok(r) => r,
                Err(p) => {
                    // Panics in the frame callback are counted by `dispatch` (each frame); one
                    // outside it (in the binding itself) is counted here.
                    if cap.panicked_frames() == before {
                        other_panics.set(other_panics.get() + 1);
                    }
                    let batches = panic_batches.get() + 1;
                    panic_batches.set(batches);
                    if log_now(batches) {
                        tracing::error!(%device, panic = %middleware_core::transport::panic_message(&*p),
                            count = cap.panicked_frames() + other_panics.get(),
                            "panic in the capture path caught; capturing goes on");
                    }
                    Ok(0)
                }
            }
        };
        let r = if crate::sys::wait_readable(&cap, latency, wake) {
            let mut r = read(&mut cap, &mut demux);
            // Immediate mode: while an IPv4 datagram is incomplete its next fragment is
            // microseconds away; reading on instead of sleeping in poll saves a wake-up per
            // fragment. Until `spin` passes without a frame, and never longer than
            // SPIN_PASS_MAX in all, so that the loop's housekeeping (filter updates, stats,
            // shutdown) still runs under a stream that always leaves a datagram incomplete.
            // Only with a few datagrams in flight: a flood of never-completed fragments
            // leaves many, and spinning for them only burns the CPU the capture needs.
            let in_flight = |d: &Demux| (1..=SPIN_MAX_PARTIALS).contains(&d.partial_ip_datagrams());
            if let (Some(spin), true) = (spin, matches!(r, Ok(n) if n > 0)) {
                let since = Instant::now();
                let mut last = since;
                while in_flight(&demux) && last.elapsed() < spin && since.elapsed() < SPIN_PASS_MAX {
                    match read(&mut cap, &mut demux) {
                        Ok(0) => std::hint::spin_loop(),
                        Ok(_) => last = Instant::now(),
                        Err(e) => {
                            r = Err(e);
                            break;
                        }
                    }
                }
            }
            r
        } else {
            Ok(0)
        };
        match r {
            Ok(0) => demux.expire_to(Instant::now(), &mut Routing { snapshot: &snapshot }),
            Ok(_) => {}
            Err(_) if stop.load(Ordering::Relaxed) => break,
            Err(e) => {
                read_errors += 1;
                if log_now(read_errors) {
                    tracing::error!(%device, error = %e, "capture read failed");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let now = Instant::now();
        if now.saturating_duration_since(last_tick) >= TICK {
            last_tick = now;
            for (_, s) in &snapshot.ports {
                s.with(|s| s.tick(now));
            }
        }
        if last_stats.elapsed() >= Duration::from_millis(100) || stop.load(Ordering::Relaxed) {
            last_stats = Instant::now();
            if let Ok(ps) = cap.stats() {
                counters.update(ps);
            }
            let mut s = stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            s.demux = demux.stats();
            s.ip = demux.ip_stats();
            (s.pcap_received, s.pcap_dropped, s.pcap_if_dropped) = counters.totals();
            s.filter_updates = applied.updates;
            s.filter_errors = applied.errors;
            s.read_errors = read_errors;
            s.panics = cap.panicked_frames() + other_panics.get();
            s.tap_panics = tap_panics.get();
        }
    }
    let mut s = stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    s.demux = demux.stats();
    s.ip = demux.ip_stats();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libpcap::Stats;

    /// Accepts every filter text except those in `refuse`; records what it was asked.
    #[derive(Default)]
    struct Target {
        refuse: Vec<String>,
        asked: Vec<String>,
    }

    impl FilterTarget for Target {
        fn set_filter(&mut self, text: &str) -> Result<(), String> {
            self.asked.push(text.to_string());
            if self.refuse.iter().any(|r| r == text) {
                Err(format!("refused `{text}`"))
            } else {
                Ok(())
            }
        }
    }

    #[test]
    fn a_refused_filter_lets_every_frame_through_and_is_tried_again() {
        let t0 = Instant::now();
        let mut a = Applied::new(0, "udp dst port 1".into());
        let mut cap = Target { refuse: vec!["udp dst port 2".into()], ..Target::default() };
        // Unchanged text: nothing installed (a swap costs frames).
        a.install(&mut cap, "udp dst port 1".into(), "lo", t0);
        assert!(cap.asked.is_empty());
        // Refused: every frame passes meanwhile, counted, tried again a second later.
        a.install(&mut cap, "udp dst port 2".into(), "lo", t0);
        assert_eq!(cap.asked, ["udp dst port 2", PASS_ALL]);
        assert_eq!((a.filter.as_str(), a.errors, a.updates), (PASS_ALL, 1, 0));
        assert!(!a.retry_due(t0 + FILTER_RETRY / 2));
        assert!(a.retry_due(t0 + FILTER_RETRY));
        // Refused again: the pass-all filter is in already, not swapped again.
        a.install(&mut cap, "udp dst port 2".into(), "lo", t0 + FILTER_RETRY);
        assert_eq!(cap.asked.len(), 3);
        assert_eq!((a.filter.as_str(), a.errors), (PASS_ALL, 2));
        // Accepted at last: installed, no retry pending.
        cap.refuse.clear();
        a.install(&mut cap, "udp dst port 2".into(), "lo", t0 + 2 * FILTER_RETRY);
        assert_eq!((a.filter.as_str(), a.errors, a.updates), ("udp dst port 2", 2, 1));
        assert!(!a.retry_due(t0 + 10 * FILTER_RETRY));
    }

    #[test]
    fn when_even_passing_every_frame_is_refused_the_old_filter_stays_and_is_retried() {
        let t0 = Instant::now();
        let mut a = Applied::new(0, "udp dst port 1".into());
        let mut cap = Target { refuse: vec!["udp dst port 2".into(), PASS_ALL.into()], ..Target::default() };
        a.install(&mut cap, "udp dst port 2".into(), "lo", t0);
        assert_eq!((a.filter.as_str(), a.errors), ("udp dst port 1", 1));
        assert!(a.retry_due(t0 + FILTER_RETRY));
        // The routes went back to what is installed: nothing to retry.
        a.install(&mut cap, "udp dst port 1".into(), "lo", t0 + FILTER_RETRY);
        assert!(!a.retry_due(t0 + 10 * FILTER_RETRY));
    }

    #[test]
    fn pcap_counters_keep_counting_across_the_32_bit_wrap() {
        let mut w = WideStats::default();
        w.update(Stats { received: u32::MAX - 10, dropped: 5, if_dropped: 0 });
        w.update(Stats { received: 20, dropped: 7, if_dropped: 1 });
        assert_eq!(w.totals(), (u64::from(u32::MAX) - 10 + 31, 7, 1));
        w.update(Stats { received: 20, dropped: 7, if_dropped: 1 });
        assert_eq!(w.totals(), (u64::from(u32::MAX) + 21, 7, 1));
    }
}
