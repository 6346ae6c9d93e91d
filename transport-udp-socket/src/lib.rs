//! UDP transport over ordinary sockets (socket2), eCAL 6.1 compatible (SPEC §8).
//!
//! Per channel two sockets, as eCAL: a receive socket bound to `0.0.0.0:port` with address
//! reuse (so several processes on a host share the port), joined to the base group and to each
//! subscribed topic's group in network mode; and a send socket on an ephemeral port with the
//! multicast TTL, loopback and outgoing interface set (network mode) or broadcast enabled and
//! the unicast TTL set (local mode).
//!
//! Entry point: [`UdpSocketTransport::open`], or [`factory`] for [`middleware_core::Node::new`].
//! Applications normally do not name it: it is the `middleware` package's default transport.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use middleware_core::{Config, Node, Text};
//! let node = Node::new(Config::default(), &transport_udp_socket::factory)?; // local mode
//! let publisher = node.publisher::<Text>("chatter")?;
//! publisher.send("hello")?;
//! # Ok(()) }
//! ```
//!
//! # Counters
//!
//! Besides the common `TransportStats` (datagrams and bytes each way, send errors, `truncated`
//! datagrams larger than the receive slot, the buffer the OS granted), `os_dropped` is the
//! receive socket's kernel drop count where the platform reports it (Linux: buffer overruns;
//! raise `udp.receive_buffer` and `net.core.rmem_max`), and `details` holds `sink_panics` and,
//! on Linux, `kernel_ip_reasm_fails` / `kernel_ip_reasm_timeouts`: IP fragments the kernel
//! dropped before reassembly (namespace-wide, since this transport opened), the reason a large
//! message is lost without the socket seeing a byte of it.

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod sys;

use middleware_core::config::Mode;
use middleware_core::transport::{
    Channel, DatagramSink, Endpoint, ReceiveThread, SinkSlot, Transport, TransportError, TransportStats, TICK,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::{ErrorKind, IoSlice};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Datagrams taken per system call at most (`recvmmsg` on Linux; one elsewhere).
const BATCH: usize = 16;
/// Receive buffer per datagram: larger than any IPv4 UDP payload.
const SLOT_LEN: usize = 65536;

/// Opens socket transports; pass to [`middleware_core::Node::new`].
pub fn factory(ep: &Endpoint, sink: Arc<dyn DatagramSink>) -> Result<Box<dyn Transport>, TransportError> {
    Ok(Box::new(UdpSocketTransport::open(ep, sink)?))
}

/// Runs `op` until it succeeds, retrying while it fails with "no buffer space" (`ENOBUFS`: the
/// interface queue is full) or is interrupted, for at most `timeout` after the first
/// `ENOBUFS`; any other error, or the timeout, returns the error.
///
/// # Errors
/// `op`'s error.
pub fn retry_no_buffer_space<T>(
    timeout: Duration,
    mut op: impl FnMut() -> std::io::Result<T>,
) -> Result<T, std::io::Error> {
    // The deadline, once the OS first refuses; `Some(None)`: past what the clock represents, none.
    let mut deadline: Option<Option<Instant>> = None;
    let mut pause = Duration::from_micros(50);
    loop {
        match op() {
            Ok(v) => return Ok(v),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(sys::ENOBUFS) => {
                let now = Instant::now();
                let end = *deadline.get_or_insert(now.checked_add(timeout));
                if end.is_some_and(|end| now >= end) {
                    return Err(e);
                }
                std::thread::sleep(end.map_or(pause, |end| pause.min(end - now)));
                pause = (pause * 2).min(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// One IPv4 address of a network interface, with the interface's flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    /// Interface name (`eth0`, `lo`).
    pub name: String,
    /// One of its IPv4 addresses (an interface with several appears once per address).
    pub ipv4: Ipv4Addr,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Can carry multicast (`IFF_MULTICAST`).
    pub multicast: bool,
    /// The loopback interface (`IFF_LOOPBACK`).
    pub loopback: bool,
}

/// The host's IPv4 interfaces (empty where enumeration is not implemented: non-Linux).
pub fn interfaces() -> Vec<InterfaceInfo> {
    sys::interfaces()
}

/// Resolves `network.interface` (a name or an IPv4 address) to an IPv4 address.
///
/// # Errors
/// Unknown interface or one without an IPv4 address, with what to do about it.
pub fn resolve_interface(spec: &str) -> Result<Ipv4Addr, TransportError> {
    if let Ok(a) = spec.parse::<Ipv4Addr>() {
        return Ok(a);
    }
    sys::interface_ipv4(spec).ok_or_else(|| {
        TransportError::Unavailable(format!(
            "network.interface `{spec}`: no such interface with an IPv4 address; \
             give an interface name from `ip -4 addr` or its IPv4 address"
        ))
    })
}

#[derive(Debug, Default)]
struct Counters {
    received_datagrams: AtomicU64,
    received_bytes: AtomicU64,
    truncated: AtomicU64,
    /// Buffers of several datagrams merged by `UDP_GRO`, cut back before the sink.
    gro_buffers: AtomicU64,
}

/// The sending half of a channel: an ephemeral-port socket with TTL, loopback and outgoing
/// interface (network mode) or broadcast (local mode). Shared with the pcap transport, whose
/// capture path only receives.
#[derive(Debug)]
pub struct UdpSender {
    tx: Socket,
    dest: SockAddr,
    sent_datagrams: AtomicU64,
    sent_bytes: AtomicU64,
    send_errors: AtomicU64,
    last_send_error_log: Mutex<Option<std::time::Instant>>,
    send_timeout: Duration,
    /// Network mode: multicast loopback can be switched.
    network: bool,
    /// `send_batch` uses segmentation offload (`UDP_SEGMENT`): the kernel has it, and no send
    /// was refused for it yet.
    offload: AtomicBool,
    /// The route's MTU minus the IPv4 and UDP headers, read at open.
    frame_payload: Option<usize>,
    /// System calls of `send_batch`, buffers sent with offload, and refusals of it.
    batch_calls: AtomicU64,
    offload_buffers: AtomicU64,
    offload_refused: AtomicU64,
}

impl UdpSender {
    /// # Errors
    /// Socket creation or option setting failed; the error names the step.
    pub fn open(ep: &Endpoint) -> Result<Self, TransportError> {
        let interface = ep.interface.as_deref().map(resolve_interface).transpose()?;
        let tx = open_sender(ep, interface)?;
        let offload = sys::has_segmentation_offload(&tx);
        let frame_payload = sys::path_mtu(SocketAddrV4::new(ep.group, ep.port), interface)
            .map(|mtu| mtu.saturating_sub(28).clamp(25, middleware_core::wire::MAX_DATAGRAM_LEN));
        tracing::debug!(?frame_payload, offload, "send socket open");
        Ok(Self {
            tx,
            dest: SocketAddrV4::new(ep.group, ep.port).into(),
            sent_datagrams: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            last_send_error_log: Mutex::new(None),
            send_timeout: ep.send_timeout,
            network: ep.mode == Mode::Network,
            offload: AtomicBool::new(offload),
            frame_payload,
            batch_calls: AtomicU64::new(0),
            offload_buffers: AtomicU64::new(0),
            offload_refused: AtomicU64::new(0),
        })
    }

    /// The largest UDP payload that fits one frame on the route to the destination (its MTU
    /// minus 28), read when the socket was opened; `None` where it could not be read.
    pub fn frame_payload_size(&self) -> Option<usize> {
        self.frame_payload
    }

    /// Whether [`send_batch`](Self::send_batch) sends runs of equal-sized datagrams as one
    /// segmentation offload buffer (Linux `UDP_SEGMENT`; off for good after the OS refused one).
    pub fn segmentation_offload(&self) -> bool {
        self.offload.load(Ordering::Relaxed)
    }

    /// Sends `datagrams` in order with as few system calls as the OS allows: runs of up to 64
    /// equal-sized datagrams as one `UDP_SEGMENT` buffer each, many of them per `sendmmsg`
    /// (Linux); one datagram per call elsewhere. Where the OS refuses the offload (an old
    /// kernel, a device without checksum offload, a datagram larger than the path MTU), that is
    /// logged once, counted (`details.send_offload_refused`) and the rest goes without it, then
    /// and afterwards. No datagram is copied.
    ///
    /// # Errors
    /// The OS refused a datagram (logged at most every 5 s, counted); the ones before it went.
    pub fn send_batch(&self, datagrams: &[middleware_core::transport::Piece<'_>]) -> Result<(), TransportError> {
        let mut rest = datagrams;
        loop {
            let offload = self.offload.load(Ordering::Relaxed);
            let (sent, r) = sys::send_batch(&self.tx, &self.dest, rest, offload, self.send_timeout);
            self.sent_datagrams.fetch_add(sent.datagrams as u64, Ordering::Relaxed);
            self.sent_bytes.fetch_add(sent.bytes as u64, Ordering::Relaxed);
            self.batch_calls.fetch_add(sent.calls as u64, Ordering::Relaxed);
            self.offload_buffers.fetch_add(sent.offload_buffers as u64, Ordering::Relaxed);
            match r {
                Ok(()) => return Ok(()),
                Err(sys::BatchError::Offload(e)) => {
                    self.offload_refused.fetch_add(1, Ordering::Relaxed);
                    if self.offload.swap(false, Ordering::Relaxed) {
                        tracing::warn!(error = %e, dest = ?self.dest.as_socket(),
                            "the OS refused UDP segmentation offload; sending one datagram per message of sendmmsg from now on");
                    }
                    rest = &rest[sent.datagrams..];
                }
                Err(sys::BatchError::Io(e)) => return Err(self.failed(e)),
            }
        }
    }

    /// Turns multicast loopback on the send socket on or off (a system call; network mode only,
    /// a no-op in local mode, whose broadcast is not affected). A refusal is logged, and sending
    /// goes on with the socket's current setting.
    pub fn set_multicast_loopback(&self, on: bool) {
        if !self.network {
            return;
        }
        match self.tx.set_multicast_loop_v4(on) {
            Ok(()) => tracing::debug!(on, "multicast loopback of the send socket"),
            Err(e) => tracing::warn!(error = %e, on, "cannot change IP_MULTICAST_LOOP on the send socket"),
        }
    }

    /// The local port datagrams are sent from (a system call: callers cache it).
    pub fn local_port(&self) -> Option<u16> {
        self.tx.local_addr().ok()?.as_socket().map(|a| a.port()).filter(|p| *p != 0)
    }

    /// Sends `header` + `body` as one datagram with one vectored call (no copy).
    ///
    /// # Errors
    /// The OS refused the datagram (logged at most every 5 s, counted).
    pub fn send(&self, header: &[u8], body: &[u8]) -> Result<(), TransportError> {
        let bufs = [IoSlice::new(header), IoSlice::new(body)];
        let len = header.len() + body.len();
        // A full interface queue (ENOBUFS) is waited out, for `udp.send_timeout_ms` at most.
        match retry_no_buffer_space(self.send_timeout, || self.tx.send_to_vectored(&bufs, &self.dest)) {
            Ok(_) => {
                self.sent_datagrams.fetch_add(1, Ordering::Relaxed);
                self.sent_bytes.fetch_add(len as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Counts and logs (at most every 5 s) a refused send.
    fn failed(&self, e: std::io::Error) -> TransportError {
        self.send_errors.fetch_add(1, Ordering::Relaxed);
        let no_space = e.raw_os_error() == Some(sys::ENOBUFS);
        let mut last = self.last_send_error_log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
            tracing::warn!(error = %e, dest = ?self.dest.as_socket(), no_space, "send failed");
            *last = Some(std::time::Instant::now());
        }
        drop(last);
        let context = if no_space {
            format!("send: the OS had no buffer space for {} ms (udp.send_timeout_ms)", self.send_timeout.as_millis())
        } else {
            "send".to_string()
        };
        TransportError::io(context, e)
    }

    /// Adds the send counters to `s`.
    pub fn fill_stats(&self, s: &mut TransportStats) {
        s.sent_datagrams = self.sent_datagrams.load(Ordering::Relaxed);
        s.sent_bytes = self.sent_bytes.load(Ordering::Relaxed);
        s.send_errors = self.send_errors.load(Ordering::Relaxed);
        for (k, v) in [
            ("send_batch_calls", &self.batch_calls),
            ("send_offload_buffers", &self.offload_buffers),
            ("send_offload_refused", &self.offload_refused),
        ] {
            s.details.insert(k.into(), v.load(Ordering::Relaxed));
        }
        s.details.insert("send_offload".into(), u64::from(self.segmentation_offload()));
    }
}

/// Joins `group` on `interface` (unspecified: the routing table decides) with `socket`.
///
/// # Errors
/// The OS refused, typically for lack of a multicast route; the message says what to add.
pub fn join_group(socket: &Socket, group: Ipv4Addr, interface: Option<Ipv4Addr>) -> Result<(), TransportError> {
    let ifa = interface.unwrap_or(Ipv4Addr::UNSPECIFIED);
    socket.join_multicast_v4(&group, &ifa).map_err(|e| {
        TransportError::io(
            format!(
                "join multicast group {group} on {ifa}: is there a multicast route? \
                 (`ip route add 224.0.0.0/4 dev <interface>`, or set network.interface)"
            ),
            e,
        )
    })
}

/// One channel's sockets, and the thread that receives on it.
#[derive(Debug)]
pub struct UdpSocketTransport {
    /// Created by `open`, or by the first `join` with `receive_on_demand`.
    rx: OnceLock<Arc<UdpSocket>>,
    /// Its receive thread, started with it.
    thread: OnceLock<ReceiveThread>,
    slot: Arc<SinkSlot>,
    tx: UdpSender,
    endpoint: Endpoint,
    interface: Option<Ipv4Addr>,
    /// Groups joined so far; its lock also serialises creating `rx`.
    joined: Mutex<Vec<Ipv4Addr>>,
    granted: AtomicU64,
    counters: Arc<Counters>,
    /// The namespace's kernel IPv4 reassembly (failures, timeouts) when this transport opened.
    reassembly_base: Option<(u64, u64)>,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TransportError {
    let context = context.into();
    move |e| TransportError::io(context, e)
}

impl UdpSocketTransport {
    /// Opens the send socket for `ep` and, unless `ep.receive_on_demand`, the receive socket
    /// (joined to the base group in network mode) and its thread, which hands every datagram
    /// to `sink`.
    ///
    /// # Errors
    /// Socket creation, bind or membership failed; the error names the step.
    pub fn open(ep: &Endpoint, sink: Arc<dyn DatagramSink>) -> Result<Self, TransportError> {
        let interface = ep.interface.as_deref().map(resolve_interface).transpose()?;
        let t = Self {
            rx: OnceLock::new(),
            thread: OnceLock::new(),
            slot: Arc::new(SinkSlot::new(sink)),
            tx: UdpSender::open(ep)?,
            endpoint: ep.clone(),
            interface,
            joined: Mutex::new(Vec::new()),
            granted: AtomicU64::new(0),
            counters: Arc::default(),
            reassembly_base: sys::ip_reassembly_failures(),
        };
        if !ep.receive_on_demand {
            t.start_receiving(&mut t.joined.lock().expect("poisoned"))?;
        }
        tracing::debug!(port = ep.port, group = %ep.group, mode = %ep.mode, ?interface,
            on_demand = ep.receive_on_demand, "socket transport open");
        Ok(t)
    }

    /// Creates the receive socket (bound to the port, with address reuse) and, in network mode,
    /// joins the base group; a no-op once done. `joined` is the locked membership list.
    fn start_receiving(&self, joined: &mut Vec<Ipv4Addr>) -> Result<(), TransportError> {
        if self.rx.get().is_some() {
            return Ok(());
        }
        if self.slot.is_closed() {
            return Err(TransportError::Closed);
        }
        let ep = &self.endpoint;
        let rx = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(io("create receive socket"))?;
        rx.set_reuse_address(true).map_err(io("SO_REUSEADDR"))?;
        // Only the groups joined here: without it Linux also hands this socket the traffic of
        // every group any other socket of the host joined on this port.
        sys::receive_only_joined_groups(&rx);
        if ep.channel == Channel::Data {
            // A sender's segmentation offload buffer that reaches this host uncut (same host,
            // veth) comes as one datagram, split by the core, instead of one per segment.
            sys::receive_offload_buffers(&rx);
        }
        self.granted.store(set_receive_buffer(&rx, ep.receive_buffer, ep.channel == Channel::Data), Ordering::Relaxed);
        let bind = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, ep.port);
        rx.bind(&bind.into()).map_err(io(format!("bind {bind}")))?;
        if ep.mode == Mode::Network {
            join_group(&rx, ep.group, self.interface)?;
            joined.push(ep.group);
        }
        // The thread wakes at least every TICK (housekeeping, stop flag) without traffic.
        rx.set_read_timeout(Some(TICK)).map_err(io("SO_RCVTIMEO"))?;
        let rx: Arc<UdpSocket> = Arc::new(rx.into());
        let name = match ep.channel {
            Channel::Registration => format!("mw-reg-rx-{}", ep.port),
            Channel::Data => format!("mw-data-rx-{}", ep.port),
        };
        let (socket, slot, counters) = (Arc::clone(&rx), Arc::clone(&self.slot), Arc::clone(&self.counters));
        let thread = ReceiveThread::spawn(name, move |stop| receive_loop(&socket, &slot, &counters, stop))
            .map_err(io("spawn receive thread"))?;
        let _ = self.rx.set(rx);
        let _ = self.thread.set(thread);
        tracing::debug!(port = ep.port, "receiving");
        Ok(())
    }

    /// Groups joined so far.
    pub fn joined(&self) -> Vec<Ipv4Addr> {
        self.joined.lock().expect("poisoned").clone()
    }
}

/// Asks for `bytes` of receive buffer; falls back to SO_RCVBUFFORCE; warns when clamped (on the
/// data channel; registration traffic is light, so there a clamp is only logged at debug).
fn set_receive_buffer(s: &Socket, bytes: usize, warn: bool) -> u64 {
    let _ = s.set_recv_buffer_size(bytes);
    // Linux reports twice the value it stores for bookkeeping; compare against half.
    let effective = |s: &Socket| {
        let v = s.recv_buffer_size().unwrap_or(0);
        if cfg!(target_os = "linux") {
            v / 2
        } else {
            v
        }
    };
    let mut got = effective(s);
    if got < bytes && sys::force_recv_buffer(s, bytes).is_ok() {
        got = effective(s);
    }
    if got < bytes && !warn {
        tracing::debug!(requested = bytes, granted = got, "registration receive buffer clamped by the OS");
    } else if got < bytes {
        tracing::warn!(
            requested = bytes,
            granted = got,
            "receive buffer clamped by the OS; large messages will be lost in bursts. Fix: \
             `sysctl -w net.core.rmem_max={bytes}` (Linux), or run with CAP_NET_ADMIN, or lower udp.receive_buffer"
        );
    }
    got as u64
}

pub(crate) fn open_sender(ep: &Endpoint, interface: Option<Ipv4Addr>) -> Result<Socket, TransportError> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(io("create send socket"))?;
    match ep.mode {
        Mode::Network => {
            s.set_multicast_ttl_v4(ep.ttl).map_err(io("IP_MULTICAST_TTL"))?;
            s.set_multicast_loop_v4(ep.multicast_loopback).map_err(io("IP_MULTICAST_LOOP"))?;
            if let Some(ifa) = interface {
                s.set_multicast_if_v4(&ifa).map_err(io(format!("IP_MULTICAST_IF {ifa}")))?;
            }
        }
        Mode::Local => {
            s.set_broadcast(true).map_err(io("SO_BROADCAST"))?;
            s.set_ttl_v4(ep.ttl).map_err(io("IP_TTL"))?;
        }
    }
    let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    s.bind(&any.into()).map_err(io("bind send socket"))?;
    Ok(s)
}

impl Transport for UdpSocketTransport {
    fn name(&self) -> &'static str {
        "socket"
    }

    fn send(&self, header: &[u8], body: &[u8]) -> Result<(), TransportError> {
        self.tx.send(header, body)
    }

    fn send_batch(&self, datagrams: &[middleware_core::transport::Piece<'_>]) -> Result<(), TransportError> {
        self.tx.send_batch(datagrams)
    }

    fn frame_payload_size(&self) -> Option<usize> {
        self.tx.frame_payload_size()
    }

    fn segmentation_offload(&self) -> bool {
        self.tx.segmentation_offload()
    }

    fn set_multicast_loopback(&self, on: bool) {
        // Never on where the configuration says no loopback at all.
        self.tx.set_multicast_loopback(on && self.endpoint.multicast_loopback);
    }

    fn join(&self, group: Ipv4Addr) -> Result<(), TransportError> {
        let mut joined = self.joined.lock().expect("poisoned");
        self.start_receiving(&mut joined)?;
        if self.endpoint.mode != Mode::Network || joined.contains(&group) {
            return Ok(());
        }
        let rx = self.rx.get().expect("started above");
        join_group(&socket2::SockRef::from(&**rx), group, self.interface)?;
        joined.push(group);
        tracing::debug!(%group, interface = ?self.interface, port = self.endpoint.port, "joined multicast group");
        Ok(())
    }

    fn stats(&self) -> TransportStats {
        let c = &self.counters;
        let mut s = TransportStats::default();
        self.tx.fill_stats(&mut s);
        s.received_datagrams = c.received_datagrams.load(Ordering::Relaxed);
        s.received_bytes = c.received_bytes.load(Ordering::Relaxed);
        s.truncated = c.truncated.load(Ordering::Relaxed);
        // Kernel drops (receive buffer overruns) where the platform reports them.
        s.os_dropped = self.rx.get().and_then(|rx| sys::socket_drops(&socket2::SockRef::from(&**rx))).unwrap_or(0);
        s.details.insert("sink_panics".into(), self.slot.panics());
        s.details.insert("receive_gro_buffers".into(), c.gro_buffers.load(Ordering::Relaxed));
        s.receive_buffer_granted = self.granted.load(Ordering::Relaxed);
        // Fragments the kernel dropped before reassembly (for every socket of this network
        // namespace, since this transport opened): the reason a fragmented message is lost
        // without this socket seeing a byte of it.
        if let (Some((f0, t0)), Some((f, t))) = (self.reassembly_base, sys::ip_reassembly_failures()) {
            s.details.insert("kernel_ip_reasm_fails".into(), f.saturating_sub(f0));
            s.details.insert("kernel_ip_reasm_timeouts".into(), t.saturating_sub(t0));
        }
        s.note = format!("socket {} {}:{}", self.endpoint.mode, self.endpoint.group, self.endpoint.port);
        s
    }

    fn close(&self) {
        self.slot.close();
        if let Some(t) = self.thread.get() {
            t.stop();
        }
    }
}

impl Drop for UdpSocketTransport {
    fn drop(&mut self) {
        self.close();
    }
}

/// The receive thread: batches of datagrams to the sink, a tick at least every [`TICK`].
fn receive_loop(socket: &UdpSocket, slot: &SinkSlot, counters: &Counters, stop: &std::sync::atomic::AtomicBool) {
    let mut batch = sys::RecvBatch::new(BATCH, SLOT_LEN);
    let mut last_tick = Instant::now();
    let mut last_error_log: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        match batch.recv(socket) {
            Ok(n) => {
                let now = Instant::now();
                // Counted before the sink sees them: stats never lag what was delivered.
                let (mut datagrams, mut bytes, mut truncated, mut gro) = (0u64, 0u64, 0u64, 0u64);
                for i in 0..n {
                    match batch.get(i) {
                        (d, Some(_), false, segment) => {
                            bytes += d.len() as u64;
                            datagrams += segment.map_or(1, |s| d.len().div_ceil(s)) as u64;
                            gro += u64::from(segment.is_some());
                        }
                        // Cannot happen with 64 KiB slots and IPv4; counted if it does.
                        _ => truncated += 1,
                    }
                }
                counters.received_datagrams.fetch_add(datagrams, Ordering::Relaxed);
                counters.gro_buffers.fetch_add(gro, Ordering::Relaxed);
                counters.received_bytes.fetch_add(bytes, Ordering::Relaxed);
                counters.truncated.fetch_add(truncated, Ordering::Relaxed);
                slot.with(|sink| {
                    for i in 0..n {
                        // Closed from inside the sink (a callback dropping its node): not one more.
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        match batch.get(i) {
                            // Datagrams merged by UDP_GRO: cut back at the kernel's segment size
                            // (by the sink, which takes them at once).
                            (d, Some(from), false, Some(s)) => sink.datagrams(d, s, from, now),
                            (d, Some(from), false, None) => sink.datagram(d, from, now),
                            _ => {}
                        }
                    }
                    if now.saturating_duration_since(last_tick) >= TICK {
                        last_tick = now;
                        sink.tick(now);
                    }
                });
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                last_tick = Instant::now();
                slot.with(|sink| sink.tick(last_tick));
            }
            Err(e) => {
                if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    tracing::warn!(error = %e, "socket receive failed");
                    last_error_log = Some(Instant::now());
                }
                std::thread::sleep(TICK);
            }
        }
    }
}

/// The local address this transport receives on (for tests and diagnostics).
pub fn local_port(t: &UdpSocketTransport) -> Option<SocketAddr> {
    t.rx.get()?.local_addr().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use middleware_core::transport::Piece;

    fn no_space() -> std::io::Error {
        std::io::Error::from_raw_os_error(sys::ENOBUFS)
    }

    /// Sends `pieces` with `sender.send_batch` and returns the datagrams `rx` got (each as the
    /// bytes it carried), waiting at most 5 s for each.
    fn batch_round_trip(sender: &UdpSender, rx: &UdpSocket, pieces: &[Piece<'_>]) -> Vec<Vec<u8>> {
        sender.send_batch(pieces).expect("sent");
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![0u8; 65536];
        let got = (0..pieces.len())
            .map(|_| rx.recv(&mut buf).map(|n| buf[..n].to_vec()).expect("datagram arrives"))
            .collect();
        // And nothing more (a datagram sent twice would show here).
        rx.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        assert!(rx.recv(&mut buf).is_err(), "an extra datagram arrived");
        got
    }

    /// A socket on an ephemeral port of every address, with room for a few hundred datagrams.
    fn receiver() -> UdpSocket {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        set_receive_buffer(&s, 8 << 20, false);
        s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into()).unwrap();
        s.into()
    }

    #[test]
    fn batches_arrive_as_the_datagrams_they_were_with_or_without_offload() {
        use middleware_core::config::Config;
        // A message cut into 1472-byte datagrams (an info datagram, equal fragments, a short
        // last), then datagrams of mixed sizes: runs end where the size changes.
        let message: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let mut pieces: Vec<Piece<'_>> = middleware_core::fragment::split(&message, 1472, 7).unwrap().collect();
        let extra: Vec<Vec<u8>> = [10usize, 10, 500, 499, 1000, 1000, 1000].iter().map(|&n| vec![n as u8; n]).collect();
        pieces.extend(extra.iter().map(|b| Piece {
            header: middleware_core::wire::DatagramRepr::Whole { len: b.len() as u32 }.to_bytes(),
            body: b,
        }));
        let want: Vec<Vec<u8>> = pieces.iter().map(|p| [&p.header[..], p.body].concat()).collect();

        let rx = receiver();
        let mut c = Config::default();
        c.set("ports.data", &rx.local_addr().unwrap().port().to_string()).unwrap();
        let ep = Endpoint::from_config(&c, Channel::Data); // local mode: broadcast on lo
        let sender = UdpSender::open(&ep).unwrap();
        let linux = cfg!(target_os = "linux");
        assert_eq!(sender.segmentation_offload(), linux);
        if linux {
            // lo's MTU is 65536: a frame holds the largest datagram.
            assert_eq!(sender.frame_payload_size(), Some(65507));
        }

        assert_eq!(batch_round_trip(&sender, &rx, &pieces), want);
        let mut s = TransportStats::default();
        sender.fill_stats(&mut s);
        assert_eq!(s.sent_datagrams, pieces.len() as u64);
        assert_eq!(s.sent_bytes, want.iter().map(Vec::len).sum::<usize>() as u64);
        if linux {
            // info | 44 + 44 + 44 + 6 fragments (the short last ends the 4th run, 1 + 138 = 139
            // fragments in all) | 10, 10 | 500, 499 | 1000 x 3: one system call.
            assert_eq!((s.details["send_batch_calls"], s.details["send_offload_buffers"]), (1, 7), "{s:?}");
        }

        // Without offload: the same datagrams, one message each.
        sender.offload.store(false, Ordering::Relaxed);
        assert_eq!(batch_round_trip(&sender, &rx, &pieces), want);
        let mut s2 = TransportStats::default();
        sender.fill_stats(&mut s2);
        assert_eq!(s2.details["send_offload_buffers"], s.details["send_offload_buffers"]);
        assert_eq!(s2.sent_datagrams, 2 * pieces.len() as u64);
    }

    /// The OS refusing the offload (here: UDP checksums off, `EINVAL`) is counted and the batch
    /// goes out without it, complete and in order; offload stays off afterwards.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_refused_offload_falls_back_without_losing_a_datagram() {
        use middleware_core::config::Config;
        let message = vec![0x5Au8; 50_000];
        let pieces: Vec<Piece<'_>> = middleware_core::fragment::split(&message, 1000, 3).unwrap().collect();
        let want: Vec<Vec<u8>> = pieces.iter().map(|p| [&p.header[..], p.body].concat()).collect();
        let rx = receiver();
        let mut c = Config::default();
        c.set("ports.data", &rx.local_addr().unwrap().port().to_string()).unwrap();
        let sender = UdpSender::open(&Endpoint::from_config(&c, Channel::Data)).unwrap();
        sys::refuse_offload(&sender.tx);
        assert_eq!(batch_round_trip(&sender, &rx, &pieces), want);
        let mut s = TransportStats::default();
        sender.fill_stats(&mut s);
        assert_eq!(s.details["send_offload_refused"], 1, "{s:?}");
        assert_eq!((s.details["send_offload"], s.details["send_offload_buffers"]), (0, 0), "{s:?}");
        assert_eq!((s.sent_datagrams, s.send_errors), (pieces.len() as u64, 0));
        assert!(!sender.segmentation_offload());
    }

    #[test]
    fn no_buffer_space_is_retried_for_a_bounded_time_then_returned() {
        // Always ENOBUFS: the error comes back (the watchdog: the test harness's thread would
        // hang forever with the old unbounded retry).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut attempts = 0;
            let r: std::io::Result<()> = retry_no_buffer_space(Duration::from_millis(30), || {
                attempts += 1;
                Err(no_space())
            });
            tx.send((r.map_err(|e| e.raw_os_error()), attempts)).unwrap();
        });
        let (r, attempts) = rx.recv_timeout(Duration::from_secs(10)).expect("retry did not give up");
        assert_eq!(r, Err(Some(sys::ENOBUFS)));
        assert!(attempts > 1, "retried before giving up: {attempts}");

        // ENOBUFS twice, then the OS takes it: success.
        let mut n = 0;
        let r = retry_no_buffer_space(Duration::from_secs(5), || {
            n += 1;
            if n < 3 {
                Err(no_space())
            } else {
                Ok(n)
            }
        });
        assert_eq!(r.unwrap(), 3);

        // Other errors are not retried.
        let mut n = 0;
        let r: std::io::Result<()> = retry_no_buffer_space(Duration::from_secs(5), || {
            n += 1;
            Err(std::io::Error::from(ErrorKind::PermissionDenied))
        });
        assert_eq!((r.unwrap_err().kind(), n), (ErrorKind::PermissionDenied, 1));
    }
}
