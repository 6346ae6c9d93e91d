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
//! kernel BPF filter). [`capture`] owns the pcap handles and threads. Group membership is held
//! by an ordinary socket bound to an unused port, so the NIC and switches deliver the groups
//! but the kernel queues nothing for us.
//!
//! Entry point: [`NpcapFactory`].

#![deny(unsafe_code)]

pub mod capture;
pub mod config;
pub mod demux;
pub mod filter;
pub mod frame;
pub mod ip_reassembly;
mod queue;
mod sys;

use crate::capture::{Capture, Routes};
pub use crate::capture::{CapturedFrame, FrameTap};
use crate::config::NpcapConfig;
use crate::queue::ByteQueue;
use middleware_core::config::{Config, Mode};
use middleware_core::transport::{Endpoint, RecvMeta, Transport, TransportError, TransportFactory, TransportStats};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use transport_udp_socket::{join_group, resolve_interface, UdpSender};

/// Why packet capture cannot be used here, with what to do.
pub fn probe() -> Result<Vec<String>, TransportError> {
    let devices = pcap::Device::list().map_err(|e| {
        TransportError::Unavailable(format!(
            "packet capture library not usable ({e}); install libpcap (Debian: `apt-get install libpcap0.8`) \
             or Npcap on Windows (https://npcap.com)"
        ))
    })?;
    Ok(devices.into_iter().map(|d| d.name).collect())
}

/// Opens capture transports. One capture (one thread per device) serves every channel of a node.
pub struct NpcapFactory {
    config: NpcapConfig,
    mode: Mode,
    interface: Option<String>,
    group: Ipv4Addr,
    multicast_loopback: bool,
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
            config: NpcapConfig::from_entries(&config.npcap)?,
            mode: config.mode,
            interface: config.interface.clone(),
            group: config.destination(),
            multicast_loopback: config.multicast_loopback,
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
        let devices = self.devices()?;
        for d in &devices {
            pcap::Capture::from_device(d.as_str())
                .and_then(|c| c.snaplen(128).timeout(1).open())
                .map_err(|e| capture::unavailable(d, &e))?;
        }
        Ok(devices)
    }

    fn devices(&self) -> Result<Vec<String>, TransportError> {
        if !self.config.interfaces.is_empty() {
            return Ok(self.config.interfaces.clone());
        }
        let all =
            pcap::Device::list().map_err(|e| TransportError::Unavailable(format!("listing capture devices: {e}")))?;
        let by_addr = |ip: Ipv4Addr| {
            all.iter().find(|d| d.addresses.iter().any(|a| a.addr == std::net::IpAddr::V4(ip))).map(|d| d.name.clone())
        };
        if let Some(spec) = &self.interface {
            if all.iter().any(|d| &d.name == spec) {
                return Ok(vec![spec.clone()]);
            }
            let ip = resolve_interface(spec)?;
            return by_addr(ip).map(|d| vec![d]).ok_or_else(|| {
                TransportError::Unavailable(format!("no capture device has address {ip} (network.interface `{spec}`)"))
            });
        }
        if self.mode == Mode::Local {
            return all.iter().find(|d| d.flags.is_loopback()).map(|d| vec![d.name.clone()]).ok_or_else(|| {
                TransportError::Unavailable("no loopback capture device found (npcap.interfaces)".into())
            });
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
        let routes = Arc::new(Routes::default());
        routes.destinations.write().expect("poisoned").push(self.group);
        let membership = match self.mode {
            Mode::Network => Some(Membership::open(self.interface.as_deref())?),
            Mode::Local => None,
        };
        let loopbacks: Vec<String> = pcap::Device::list()
            .map(|l| l.into_iter().filter(|d| d.flags.is_loopback()).map(|d| d.name).collect())
            .unwrap_or_default();
        let with_kind: Vec<(String, bool)> =
            devices.iter().map(|d| (d.clone(), loopbacks.contains(d) || d == "lo")).collect();
        let capture =
            Capture::start(&with_kind, &self.config, Arc::clone(&routes), self.multicast_loopback, self.tap.clone())?;
        let s = Arc::new(Shared { routes, capture, devices, membership });
        *guard = Some(Arc::clone(&s));
        Ok(s)
    }
}

impl TransportFactory for NpcapFactory {
    fn open(&self, ep: &Endpoint) -> Result<Box<dyn Transport>, TransportError> {
        let shared = self.shared()?;
        let queue = Arc::new(ByteQueue::new(self.config.queue_bytes));
        let t = NpcapTransport {
            shared: Arc::clone(&shared),
            queue: Arc::clone(&queue),
            port: ep.port,
            sender: UdpSender::open(ep)?,
            mode: ep.mode,
            received_datagrams: Default::default(),
            received_bytes: Default::default(),
        };
        shared.routes.ports.write().expect("poisoned").insert(ep.port, queue);
        shared.routes.generation.fetch_add(1, Ordering::Release);
        if ep.mode == Mode::Network {
            t.join(ep.group)?;
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

/// One channel: receives from the shared capture, sends through a socket.
pub struct NpcapTransport {
    shared: Arc<Shared>,
    queue: Arc<ByteQueue>,
    port: u16,
    sender: UdpSender,
    mode: Mode,
    received_datagrams: std::sync::atomic::AtomicU64,
    received_bytes: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for NpcapTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NpcapTransport").field("port", &self.port).field("devices", &self.shared.devices).finish()
    }
}

impl Drop for NpcapTransport {
    fn drop(&mut self) {
        self.shared.routes.ports.write().expect("poisoned").remove(&self.port);
        self.queue.close();
    }
}

impl Transport for NpcapTransport {
    fn name(&self) -> &'static str {
        "npcap"
    }

    fn send(&self, header: &[u8], body: &[u8]) -> Result<(), TransportError> {
        self.sender.send(header, body)
    }

    fn recv(&self, buf: &mut [u8], timeout: Duration) -> Result<Option<RecvMeta>, TransportError> {
        let Some((d, from)) = self.queue.pop(timeout) else { return Ok(None) };
        if d.len() > buf.len() {
            return Ok(None);
        }
        buf[..d.len()].copy_from_slice(&d);
        self.received_datagrams.fetch_add(1, Ordering::Relaxed);
        self.received_bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
        Ok(Some(RecvMeta::new(d.len(), from)))
    }

    fn join(&self, group: Ipv4Addr) -> Result<(), TransportError> {
        if self.mode != Mode::Network {
            return Ok(());
        }
        if let Some(m) = &self.shared.membership {
            if m.join(group)? {
                let mut d = self.shared.routes.destinations.write().expect("poisoned");
                if !d.contains(&group) {
                    d.push(group);
                }
                drop(d);
                self.shared.routes.generation.fetch_add(1, Ordering::Release);
            }
        }
        Ok(())
    }

    fn stats(&self) -> TransportStats {
        let mut s = TransportStats::default();
        self.sender.fill_stats(&mut s);
        s.received_datagrams = self.received_datagrams.load(Ordering::Relaxed);
        s.received_bytes = self.received_bytes.load(Ordering::Relaxed);
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
            add("ip_fragments", d.ip.fragments);
            add("ip_completed", d.ip.completed);
            add("ip_duplicates", d.ip.duplicates);
            add("ip_conflicts", d.ip.conflicts);
            add("ip_malformed", d.ip.malformed);
            add("ip_expired", d.ip.expired);
            add("ip_evicted", d.ip.evicted);
            add("filter_updates", d.filter_updates);
        }
        let qd = self.queue.dropped.load(Ordering::Relaxed);
        add("queue_dropped", qd);
        s.os_dropped = details["pcap_dropped"] + details["pcap_if_dropped"] + qd;
        s.details = details;
        s.note = format!("npcap on {}", self.shared.devices.join(","));
        s
    }
}
