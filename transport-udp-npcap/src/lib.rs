//! Receive eCAL UDP traffic by packet capture (libpcap on Linux and macOS, Npcap on Windows)
//! instead of sockets, while sending through ordinary sockets: wire compatible with socket peers.
//!
//! Why: on Windows 10+ every multicast datagram received through a socket is inspected by the
//! Defender firewall inside tcpip.sys, which saturates a core; frames captured below the stack
//! skip that. On Linux the same path reads a memory-mapped ring in blocks and is cheaper per
//! packet than `recvmsg` (see the project's benchmarks).
//!
//! Pipeline (pure modules, no pcap types): [`frame`] (link type -> IPv4 packet), [`ip_reassembly`]
//! (bounded IPv4 fragment reassembly), [`demux`] (UDP, port and destination), [`filter`] (the
//! kernel BPF filter). [`capture`] owns the capture handles and threads; [`libpcap`] loads
//! libpcap / Npcap at run time (never linked), so programs start without it. Group membership is held
//! by an ordinary socket bound to an unused port, so the NIC and switches deliver the groups
//! but the kernel queues nothing for us.
//!
//! Entry point: [`NpcapFactory`], a [`TransportFactory`] for `middleware_core::Node`.
//! Applications normally do not name it: the `middleware` package opens it when the
//! configuration says `transport = "npcap"` (or `"auto"` and capture works here).
//!
//! ```no_run
//! // Capture needs libpcap (Linux: `apt-get install libpcap0.8`) or Npcap (Windows), and the
//! // permission to capture (Linux: root or CAP_NET_RAW).
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use middleware_core::{Config, Node, Raw};
//! let mut config = Config::default();
//! config.set("mode", "network")?;
//! config.set("npcap.immediate", "true")?; // lowest latency; the default reads in blocks
//! let factory = transport_udp_npcap::NpcapFactory::new(&config)?;
//! let node = Node::new(config, &factory)?;
//! let subscriber = node.subscriber::<Raw>("camera/front")?;
//! # drop(subscriber); Ok(()) }
//! ```
//!
//! # Requirements and errors
//!
//! * The capture library, loaded at run time: `libpcap.so.1` / `libpcap.so.0.8` on Linux,
//!   Npcap's `wpcap.dll` on Windows (`npcap.library` names another path). Missing: a
//!   [`LoadError`] naming every place tried and what to install.
//! * The permission to capture: root or `CAP_NET_RAW` on Linux (`setcap cap_net_raw+ep`),
//!   Npcap without the admin-only option on Windows. Missing: a [`libpcap::OpenError`] that
//!   says which.
//! * [`availability`] and [`decide`] tell, without opening anything, whether `transport = auto`
//!   would capture here and why; `mwctl doctor` prints the same.
//!
//! # Counters
//!
//! [`NpcapTransport`]'s `stats()` fills `TransportStats::details` with, per capture: frames
//! (`pcap_received`), frames lost because the capture buffer was full (`pcap_dropped`, also in
//! `os_dropped`; raise `npcap.buffer_size`) or by the interface (`pcap_if_dropped`), frames that
//! did not decode (`frames_malformed`, `frames_not_ipv4`, `frames_not_udp`, `udp_malformed`),
//! UDP for ports or groups nobody here listens to (`udp_unwanted`, normal), IPv4 reassembly
//! (`ip_fragments`, `ip_completed`, `ip_duplicates`, and datagrams lost: `ip_conflicts`,
//! `ip_expired`, `ip_evicted`, `ip_malformed`), direct placement of fragmented datagrams
//! (`ip_streamed`, `ip_stream_fallbacks` to reassembly part-way, and lost unfinished:
//! `ip_streams_expired`, `ip_streams_evicted`; see [`demux`]), kernel filter updates, read errors, panics
//! caught (`capture_panics`, `sink_panics`: defects), and the self-check: `self_heard` (this
//! node's own registration datagrams the capture heard), `capture_deaf` (1 while a capture that
//! should hear them does not: a capture on the wrong device, a filter, a driver; see
//! [`hearing`]) and `capture_deaf_events`.
//!
//! # Memory
//!
//! The capture ring (`npcap.buffer_size`, 64 MiB by default) is the only queue; IPv4
//! reassembly is bounded in time (`npcap.ip_timeout_ms`), partial datagrams
//! (`npcap.ip_max_datagrams`) and bytes (`npcap.ip_max_buffered_bytes`), so a flood of
//! never-completed fragments costs a bounded amount and is counted, never unbounded memory.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod capture;
pub mod config;
pub mod demux;
pub mod filter;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod hearing;
pub mod ip_reassembly;
pub mod libpcap;
mod sys;

use crate::capture::write;
use crate::capture::{Capture, Routes};
pub use crate::capture::{CapturedFrame, FrameTap};
use crate::config::NpcapConfig;
use crate::hearing::SelfHearing;
use crate::libpcap::Handle;
pub use crate::libpcap::{Device, Library, LoadError};
use middleware_core::config::{Config, Mode};
use middleware_core::transport::{
    Channel, DatagramSink, Endpoint, SinkSlot, Transport, TransportError, TransportFactory, TransportStats,
};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use transport_udp_socket::{join_group, resolve_interface, UdpSender};

/// The capture library a configuration uses (`npcap.library`, else the platform's usual
/// places), loaded at run time.
///
/// # Errors
/// Not installed (the message names every place tried and what to install).
pub fn library(config: &NpcapConfig) -> Result<&'static Library, LoadError> {
    libpcap::load(config.library.as_deref())
}

/// What packet capture can do on this machine, as far as can be known without opening a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Availability {
    /// (path, version string) of the loaded library, or why it could not be loaded.
    pub library: Result<(String, String), String>,
    /// The devices it lists, or why listing failed (empty when the library did not load).
    pub devices: Result<Vec<Device>, String>,
}

/// Loads the library (if not yet) and lists the devices.
#[must_use]
pub fn availability(config: &Config) -> Availability {
    let lib = NpcapConfig::from_entries(&config.npcap())
        .map_err(|e| e.to_string())
        .and_then(|c| library(&c).map_err(|e| e.to_string()));
    match lib {
        Ok(l) => Availability { library: Ok((l.path.clone(), l.version.clone())), devices: l.devices() },
        Err(e) => Availability { library: Err(e), devices: Ok(Vec::new()) },
    }
}

/// Whether `transport = auto` captures, and why, in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Capture (true) or use sockets (false).
    pub capture: bool,
    /// Why, in words a user can act on.
    pub reason: String,
}

/// The `auto` choice from what is available (opening the devices may still fail for lack of
/// permission; callers fall back then too).
#[must_use]
pub fn decide(mode: Mode, a: &Availability) -> Decision {
    let no = |reason: String| Decision { capture: false, reason };
    let (path, version) = match &a.library {
        Ok((path, version)) => (path, sys::library_label(version)),
        Err(e) => return no(e.clone()),
    };
    let devices = match &a.devices {
        Ok(d) if !d.is_empty() => d,
        Ok(_) => return no(format!("{version} ({path}) lists no capture devices; {}", sys::NO_DEVICES_HINT)),
        Err(e) => return no(format!("{version} ({path}) cannot list capture devices ({e}); {}", sys::NO_DEVICES_HINT)),
    };
    let loopback = devices.iter().find(|d| d.loopback);
    if mode == Mode::Local && loopback.is_none() {
        return no(sys::NO_LOOPBACK_DEVICE.to_string());
    }
    Decision {
        capture: true,
        reason: format!(
            "{version} ({path}): {} capture devices{}",
            devices.len(),
            loopback.map(|d| format!(", loopback {}", sys::describe_device(d))).unwrap_or_default()
        ),
    }
}

/// The range every topic's group lies in (network mode, eCAL's v2 mapping): (base & mask,
/// mask), when it is all multicast (a mask shorter than /4 would let unicast traffic through
/// the filter); otherwise `None`, and the filter lists the groups joined.
fn topic_range(config: &Config) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let (base, mask) = (config.network_group(), config.network_mask());
    let multicast = base.is_multicast() && u32::from(mask) >> 28 == 0xf;
    (config.mode() == Mode::Network
        && config.group_mapping() == middleware_core::topic_group::GroupMapping::V2
        && multicast)
        .then(|| (Ipv4Addr::from(u32::from(base) & u32::from(mask)), mask))
}

/// Opens capture transports. One capture (one thread per device) serves every channel of a node.
pub struct NpcapFactory {
    config: NpcapConfig,
    mode: Mode,
    interface: Option<String>,
    group: Ipv4Addr,
    /// Network mode, v2 mapping: every topic's group lies in (base & mask, mask).
    topic_range: Option<(Ipv4Addr, Ipv4Addr)>,
    multicast_loopback: bool,
    /// When the registration channel's capture counts as deaf (`hearing::deaf_after`).
    deaf_after: std::time::Duration,
    shared: Mutex<Option<Arc<Shared>>>,
    tap: Option<capture::FrameTap>,
}

struct Shared {
    routes: Arc<Routes>,
    capture: Capture,
    devices: Vec<String>,
    membership: Option<Membership>,
}

impl NpcapFactory {
    /// # Errors
    /// Bad `npcap.*` option.
    pub fn new(config: &Config) -> Result<Self, middleware_core::config::ConfigError> {
        Ok(Self {
            config: NpcapConfig::from_entries(&config.npcap())?,
            mode: config.mode(),
            interface: config.interface().map(str::to_string),
            group: config.destination(),
            topic_range: topic_range(config),
            multicast_loopback: config.multicast_loopback(),
            deaf_after: hearing::deaf_after(config.registration_refresh()),
            shared: Mutex::new(None),
            tap: None,
        })
    }

    /// Calls `tap` with every captured frame (e.g. to record it), before it is decoded.
    #[must_use]
    pub fn with_frame_tap(mut self, tap: capture::FrameTap) -> Self {
        self.tap = Some(tap);
        self
    }

    /// Which devices this configuration would capture on, each opened once to prove the
    /// permission (for diagnostics: `mwctl doctor`).
    ///
    /// # Errors
    /// No device, or one that cannot be opened (the message says what to grant).
    pub fn check(&self) -> Result<Vec<String>, TransportError> {
        let lib = self.library()?;
        let devices = self.devices()?;
        let opts = libpcap::LiveOptions { snaplen: 128, buffer_size: 1 << 16, timeout_ms: 1, immediate: false };
        for d in &devices {
            Handle::open_live(lib, d, opts).map_err(|e| capture::unavailable(d, &e))?;
        }
        Ok(devices)
    }

    fn library(&self) -> Result<&'static Library, TransportError> {
        library(&self.config).map_err(|e| TransportError::Unavailable(e.to_string()))
    }

    fn devices(&self) -> Result<Vec<String>, TransportError> {
        if !self.config.interfaces.is_empty() {
            return Ok(self.config.interfaces.clone());
        }
        let all = self.library()?.devices().map_err(|e| {
            TransportError::Unavailable(format!("listing capture devices: {e}; {}", sys::NO_DEVICES_HINT))
        })?;
        let by_addr = |ip: Ipv4Addr| all.iter().find(|d| d.ipv4.contains(&ip)).map(|d| d.name.clone());
        if let Some(spec) = &self.interface {
            if let Some(d) = all.iter().find(|d| sys::device_matches(spec, d)) {
                return Ok(vec![d.name.clone()]);
            }
            let ip = resolve_interface(spec)?;
            return by_addr(ip).map(|d| vec![d]).ok_or_else(|| {
                TransportError::Unavailable(format!("no capture device has address {ip} (network.interface `{spec}`)"))
            });
        }
        if self.mode == Mode::Local {
            return all
                .iter()
                .find(|d| d.loopback)
                .map(|d| vec![d.name.clone()])
                .ok_or_else(|| TransportError::Unavailable(sys::NO_LOOPBACK_DEVICE.into()));
        }
        // The interface the group routes to: the source address the kernel picks for it.
        let probe = UdpSocket::bind("0.0.0.0:0").map_err(|e| TransportError::io("route probe", e))?;
        probe.connect(SocketAddrV4::new(self.group, 9)).map_err(|e| {
            TransportError::io(format!("no route to {}: add a multicast route or set network.interface", self.group), e)
        })?;
        let src = match probe.local_addr() {
            Ok(std::net::SocketAddr::V4(a)) => *a.ip(),
            _ => Ipv4Addr::UNSPECIFIED,
        };
        by_addr(src).map(|d| vec![d]).ok_or_else(|| {
            TransportError::Unavailable(format!(
                "cannot find the capture device for {} (route source {src}); set network.interface or npcap.interfaces",
                self.group
            ))
        })
    }

    fn shared(&self) -> Result<Arc<Shared>, TransportError> {
        let mut guard = self.shared.lock().expect("poisoned");
        if let Some(s) = guard.as_ref() {
            return Ok(Arc::clone(s));
        }
        let devices = self.devices()?;
        let routes = Arc::new(Routes::new(self.topic_range));
        write(&routes.destinations).push(self.group);
        let membership = match self.mode {
            Mode::Network => Some(Membership::open(self.interface.as_deref())?),
            Mode::Local => None,
        };
        let lib = self.library()?;
        let loopbacks: Vec<String> =
            lib.devices().unwrap_or_default().into_iter().filter(|d| d.loopback).map(|d| d.name).collect();
        let with_kind: Vec<(String, bool)> =
            devices.iter().map(|d| (d.clone(), loopbacks.contains(d) || d == "lo")).collect();
        let capture = Capture::start(
            lib,
            &with_kind,
            &self.config,
            Arc::clone(&routes),
            self.multicast_loopback,
            self.tap.clone(),
        )?;
        let s = Arc::new(Shared { routes, capture, devices, membership });
        *guard = Some(Arc::clone(&s));
        Ok(s)
    }
}

impl TransportFactory for NpcapFactory {
    fn open(&self, ep: &Endpoint, sink: Arc<dyn DatagramSink>) -> Result<Box<dyn Transport>, TransportError> {
        let shared = self.shared()?;
        let sender = UdpSender::open(ep)?;
        // The registration channel sends every refresh period and always receives: its capture
        // must hear its own sends (unless multicast loopback is off: then it ignores them; or
        // a network TTL of 0 keeps them off the device).
        let checked = ep.channel == Channel::Registration
            && ep.multicast_loopback
            && !ep.receive_on_demand
            && (ep.mode == Mode::Local || ep.ttl > 0);
        let hearing = Arc::new(SelfHearing::new(
            checked,
            self.deaf_after,
            sender.local_port(),
            format!("{} (port {})", shared.devices.join(","), ep.port),
            std::time::Instant::now(),
        ));
        let counted = Arc::new(Counting {
            inner: sink,
            datagrams: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            hearing: Arc::clone(&hearing),
        });
        let t = NpcapTransport {
            hearing,
            shared: Arc::clone(&shared),
            slot: Arc::new(SinkSlot::new(Arc::clone(&counted) as Arc<dyn DatagramSink>)),
            counted,
            port: ep.port,
            sender,
            mode: ep.mode,
            group: ep.group,
            multicast_loopback: ep.multicast_loopback,
            receiving: Mutex::new(false),
        };
        if !ep.receive_on_demand {
            t.start_receiving()?;
            t.routes_applied();
        }
        Ok(Box::new(t))
    }
}

/// An ordinary socket, bound to a port nobody sends to, that holds the group memberships.
struct Membership {
    socket: Socket,
    interface: Option<Ipv4Addr>,
    joined: Mutex<Vec<Ipv4Addr>>,
}

impl Membership {
    fn open(interface: Option<&str>) -> Result<Self, TransportError> {
        let interface = interface.map(resolve_interface).transpose()?;
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
            .map_err(|e| TransportError::io("membership socket", e))?;
        socket
            .bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into())
            .map_err(|e| TransportError::io("bind membership socket", e))?;
        // Nothing is ever read from it; keep its buffer minimal.
        let _ = socket.set_recv_buffer_size(4096);
        Ok(Self { socket, interface, joined: Mutex::new(Vec::new()) })
    }

    fn join(&self, group: Ipv4Addr) -> Result<bool, TransportError> {
        let mut j = self.joined.lock().expect("poisoned");
        if j.contains(&group) {
            return Ok(false);
        }
        join_group(&self.socket, group, self.interface)?;
        j.push(group);
        sys::cold_start(&j, self.interface);
        Ok(true)
    }
}

/// Counts what a channel's sink is handed (before it sees it: stats never lag delivery), and
/// notes the node's own datagrams for the deaf-capture check.
struct Counting {
    inner: Arc<dyn DatagramSink>,
    datagrams: AtomicU64,
    bytes: AtomicU64,
    hearing: Arc<SelfHearing>,
}

impl DatagramSink for Counting {
    fn datagram(&self, datagram: &[u8], source: std::net::SocketAddr, now: std::time::Instant) {
        self.datagrams.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(datagram.len() as u64, Ordering::Relaxed);
        if self.hearing.checked() {
            self.hearing.on_datagram(source);
        }
        self.inner.datagram(datagram, source, now);
    }
    fn tick(&self, now: std::time::Instant) {
        self.inner.tick(now);
    }

    fn begin_datagram(
        &self,
        first: &[u8],
        len: usize,
        source: std::net::SocketAddr,
        now: std::time::Instant,
    ) -> Option<middleware_core::DatagramLease> {
        self.inner.begin_datagram(first, len, source, now)
    }

    fn finish_datagram(&self, lease: middleware_core::DatagramLease, now: std::time::Instant) {
        if self.hearing.checked() {
            self.hearing.on_datagram(lease.sender());
        }
        self.datagrams.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(lease.datagram_len() as u64, Ordering::Relaxed);
        self.inner.finish_datagram(lease, now);
    }

    fn abort_datagram(&self, lease: middleware_core::DatagramLease, out: Option<&mut Vec<u8>>) -> bool {
        self.inner.abort_datagram(lease, out)
    }
}

/// One channel: receives from the shared capture (its sink is called on the capture threads),
/// sends through a socket.
pub struct NpcapTransport {
    hearing: Arc<SelfHearing>,
    shared: Arc<Shared>,
    slot: Arc<SinkSlot>,
    counted: Arc<Counting>,
    port: u16,
    sender: UdpSender,
    mode: Mode,
    /// The endpoint's base group, joined when receiving starts (network mode).
    group: Ipv4Addr,
    /// `network.multicast_loopback`: whether the send socket's loopback may be on at all.
    multicast_loopback: bool,
    /// Whether the capture routes this port's datagrams to the sink yet (`receive_on_demand`).
    receiving: Mutex<bool>,
}

impl std::fmt::Debug for NpcapTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NpcapTransport").field("port", &self.port).field("devices", &self.shared.devices).finish()
    }
}

impl Drop for NpcapTransport {
    fn drop(&mut self) {
        self.close();
    }
}

impl NpcapTransport {
    /// After a send: whether the capture hears this host's own traffic (see `hearing`).
    fn sent(&self) {
        let h = &self.hearing;
        if h.checked() {
            let port = if h.port_known() { None } else { self.sender.local_port() };
            if let hearing::Verdict::Deaf { unheard_for, sends, log: true, .. } =
                h.on_sent(port, std::time::Instant::now())
            {
                tracing::error!(
                    "{} (repeated with a growing interval while it lasts)",
                    h.complaint(unheard_for, sends)
                );
            }
        }
    }

    /// Routes this port's datagrams from the capture to the sink and, in network mode, joins
    /// the base group; a no-op once done.
    fn start_receiving(&self) -> Result<(), TransportError> {
        let mut receiving = self.receiving.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *receiving {
            return Ok(());
        }
        if self.slot.is_closed() {
            return Err(TransportError::Closed);
        }
        write(&self.shared.routes.ports).insert(self.port, Arc::clone(&self.slot));
        self.shared.routes.changed();
        *receiving = true;
        drop(receiving);
        self.join_group(self.group)
    }

    /// Receiving has started once the capture threads filter for the port and group: a
    /// datagram sent after this returns (e.g. once a peer saw our subscriber) is captured.
    fn routes_applied(&self) {
        self.shared.capture.apply(&self.shared.routes);
    }

    fn join_group(&self, group: Ipv4Addr) -> Result<(), TransportError> {
        if self.mode != Mode::Network {
            return Ok(());
        }
        if let Some(m) = &self.shared.membership {
            m.join(group)?;
            // Routed by whichever caller gets here first, even when another one joined the
            // group a moment ago and has not routed it yet: then both wait for the same change.
            let mut d = write(&self.shared.routes.destinations);
            let added = !d.contains(&group);
            if added {
                d.push(group);
            }
            drop(d);
            if added {
                self.shared.routes.changed();
            }
        }
        Ok(())
    }
}

impl Transport for NpcapTransport {
    fn name(&self) -> &'static str {
        "npcap"
    }

    fn set_multicast_loopback(&self, on: bool) {
        self.sender.set_multicast_loopback(on && self.multicast_loopback);
    }

    fn send(&self, header: &[u8], body: &[u8]) -> Result<(), TransportError> {
        self.sender.send(header, body)?;
        self.sent();
        Ok(())
    }

    fn send_batch(&self, datagrams: &[middleware_core::transport::Piece<'_>]) -> Result<(), TransportError> {
        self.sender.send_batch(datagrams)?;
        self.sent();
        Ok(())
    }

    fn frame_payload_size(&self) -> Option<usize> {
        self.sender.frame_payload_size()
    }

    fn segmentation_offload(&self) -> bool {
        self.sender.segmentation_offload()
    }

    fn join(&self, group: Ipv4Addr) -> Result<(), TransportError> {
        self.start_receiving()?;
        self.join_group(group)?;
        self.routes_applied();
        Ok(())
    }

    fn stats(&self) -> TransportStats {
        let mut s = TransportStats::default();
        self.sender.fill_stats(&mut s);
        let mut details = std::collections::BTreeMap::new();
        let mut add = |k: &str, v: u64| *details.entry(k.to_string()).or_insert(0) += v;
        for dev in &self.shared.capture.stats {
            let d = dev.lock().expect("poisoned");
            add("pcap_received", d.pcap_received);
            add("pcap_dropped", d.pcap_dropped);
            add("pcap_if_dropped", d.pcap_if_dropped);
            add("frames", d.demux.frames);
            add("frames_malformed", d.demux.frames_malformed);
            add("frames_not_ipv4", d.demux.frames_not_ipv4);
            add("frames_not_udp", d.demux.frames_not_udp);
            add("udp_malformed", d.demux.udp_malformed);
            add("udp_unwanted", d.demux.udp_unwanted);
            add("fragments_unwanted", d.demux.fragments_unwanted);
            add("ip_fragments", d.ip.fragments);
            add("ip_completed", d.ip.completed);
            add("ip_duplicates", d.ip.duplicates);
            add("ip_conflicts", d.ip.conflicts);
            add("ip_malformed", d.ip.malformed);
            add("ip_expired", d.ip.expired);
            add("ip_evicted", d.ip.evicted);
            add("ip_streamed", d.demux.streamed);
            add("ip_stream_fallbacks", d.demux.stream_fallbacks);
            add("ip_streams_expired", d.demux.streams_expired);
            add("ip_streams_evicted", d.demux.streams_evicted);
            add("filter_updates", d.filter_updates);
            add("filter_errors", d.filter_errors);
            add("read_errors", d.read_errors);
            add("capture_panics", d.panics);
            add("tap_panics", d.tap_panics);
        }
        add("sink_panics", self.slot.panics());
        if self.hearing.checked() {
            add("self_heard", self.hearing.heard());
            add("capture_deaf", u64::from(self.hearing.is_deaf()));
            add("capture_deaf_events", self.hearing.deaf_events());
        }
        s.received_datagrams = self.counted.datagrams.load(Ordering::Relaxed);
        s.received_bytes = self.counted.bytes.load(Ordering::Relaxed);
        s.os_dropped = details["pcap_dropped"] + details["pcap_if_dropped"];
        s.details = details;
        s.note = format!("npcap on {}", self.shared.devices.join(","));
        s
    }

    fn close(&self) {
        // Under the `receiving` lock: a concurrent `start_receiving` either routes before this
        // removes the route, or sees the slot closed and does not route.
        let receiving = self.receiving.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let removed = {
            let mut ports = write(&self.shared.routes.ports);
            match ports.get(&self.port) {
                Some(s) if Arc::ptr_eq(s, &self.slot) => ports.remove(&self.port),
                _ => None,
            }
        };
        if removed.is_some() {
            self.shared.routes.changed();
        }
        // Detached before the lock is released (a later `start_receiving` sees it closed);
        // in-progress calls are waited for after it is released.
        self.slot.detach();
        drop(receiving);
        // No call into the sink after this returns (except the capture thread's own, when
        // that thread is the one closing).
        self.slot.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str, loopback: bool) -> Device {
        Device { name: name.into(), description: None, ipv4: vec![], loopback, up: true }
    }

    fn lib() -> Result<(String, String), String> {
        Ok(("libpcap.so.1".into(), "libpcap version 1.10.3".into()))
    }

    #[test]
    fn the_filter_passes_a_topic_range_only_when_it_is_all_multicast() {
        let mut c = Config::default();
        c.set("mode", "network").unwrap();
        let range = |c: &Config| topic_range(c);
        assert_eq!(range(&c), Some((Ipv4Addr::new(239, 0, 0, 0), Ipv4Addr::new(255, 255, 255, 240))));
        let mut wide = c.clone();
        wide.set("network.mask", "0.0.0.0").unwrap();
        assert_eq!(range(&wide), None, "a mask shorter than /4 reaches unicast addresses");
        let mut v1 = c.clone();
        v1.set("network.group_mapping", "v1").unwrap();
        assert_eq!(range(&v1), None, "v1 groups are not one range");
        let mut local = c.clone();
        local.set("mode", "local").unwrap();
        assert_eq!(range(&local), None);
    }

    #[test]
    fn auto_captures_only_with_a_library_and_the_devices_the_mode_needs() {
        let missing =
            Availability { library: Err("packet capture library not found (...)".into()), devices: Ok(vec![]) };
        let d = decide(Mode::Network, &missing);
        assert!(!d.capture && d.reason.starts_with("packet capture library not found"), "{d:?}");

        let broken = Availability { library: lib(), devices: Err("driver gone".into()) };
        let d = decide(Mode::Network, &broken);
        assert!(!d.capture && d.reason.contains("driver gone") && d.reason.contains(sys::NO_DEVICES_HINT), "{d:?}");

        let none = Availability { library: lib(), devices: Ok(vec![]) };
        assert!(!decide(Mode::Local, &none).capture);

        let no_loopback = Availability { library: lib(), devices: Ok(vec![dev("eth0", false)]) };
        let d = decide(Mode::Local, &no_loopback);
        assert_eq!(d, Decision { capture: false, reason: sys::NO_LOOPBACK_DEVICE.into() });
        let d = decide(Mode::Network, &no_loopback);
        assert!(d.capture, "{d:?}");
        assert_eq!(d.reason, "libpcap version 1.10.3 (libpcap.so.1): 1 capture devices");

        let both = Availability { library: lib(), devices: Ok(vec![dev("eth0", false), dev("lo", true)]) };
        let d = decide(Mode::Local, &both);
        assert!(d.capture && d.reason.ends_with("2 capture devices, loopback lo"), "{d:?}");
    }

    #[test]
    fn availability_reports_a_missing_library_and_a_bad_option_without_panicking() {
        let mut c = Config::default();
        c.set("npcap.library", "/nonexistent/libpcap-availability.so").unwrap();
        let a = availability(&c);
        assert!(a.library.as_ref().unwrap_err().contains("/nonexistent/libpcap-availability.so"), "{a:?}");
        assert_eq!(a.devices, Ok(vec![]));
        c.set("npcap.snaplen", "12").unwrap();
        assert!(availability(&c).library.unwrap_err().contains("npcap.snaplen"));
    }
}
