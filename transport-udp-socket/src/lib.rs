//! UDP transport over ordinary sockets (socket2), eCAL 6.1 compatible (SPEC §8).
//!
//! Per channel two sockets, as eCAL: a receive socket bound to `0.0.0.0:port` with address
//! reuse (so several processes on a host share the port), joined to the base group and to each
//! subscribed topic's group in network mode; and a send socket on an ephemeral port with the
//! multicast TTL, loopback and outgoing interface set (network mode) or broadcast enabled and
//! the unicast TTL set (local mode).
//!
//! Entry point: [`UdpSocketTransport::open`], or [`factory`] for [`middleware_core::Node::new`].

#![deny(unsafe_code)]

mod sys;

use middleware_core::config::Mode;
use middleware_core::transport::{Channel, Endpoint, RecvMeta, Transport, TransportError, TransportStats};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::{ErrorKind, IoSlice};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Opens socket transports; pass to [`middleware_core::Node::new`].
pub fn factory(ep: &Endpoint) -> Result<Box<dyn Transport>, TransportError> {
    Ok(Box::new(UdpSocketTransport::open(ep)?))
}

/// One IPv4 address of a network interface, with the interface's flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub name: String,
    pub ipv4: Ipv4Addr,
    pub up: bool,
    pub multicast: bool,
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
}

impl UdpSender {
    /// # Errors
    /// Socket creation or option setting failed; the error names the step.
    pub fn open(ep: &Endpoint) -> Result<Self, TransportError> {
        let interface = ep.interface.as_deref().map(resolve_interface).transpose()?;
        Ok(Self {
            tx: open_sender(ep, interface)?,
            dest: SocketAddrV4::new(ep.group, ep.port).into(),
            sent_datagrams: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            last_send_error_log: Mutex::new(None),
        })
    }

    /// Sends `header` + `body` as one datagram with one vectored call (no copy).
    ///
    /// # Errors
    /// The OS refused the datagram (logged at most every 5 s, counted).
    pub fn send(&self, header: &[u8], body: &[u8]) -> Result<(), TransportError> {
        let bufs = [IoSlice::new(header), IoSlice::new(body)];
        let len = header.len() + body.len();
        loop {
            match self.tx.send_to_vectored(&bufs, &self.dest) {
                Ok(_) => {
                    self.sent_datagrams.fetch_add(1, Ordering::Relaxed);
                    self.sent_bytes.fetch_add(len as u64, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // A full send queue (ENOBUFS on Linux): wait for it to drain rather than drop.
                Err(e) if e.raw_os_error() == Some(105) => {
                    std::thread::sleep(Duration::from_micros(100));
                    continue;
                }
                Err(e) => {
                    self.send_errors.fetch_add(1, Ordering::Relaxed);
                    let mut last = self.last_send_error_log.lock().expect("poisoned");
                    if last.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                        tracing::warn!(error = %e, dest = ?self.dest.as_socket(), "send failed");
                        *last = Some(std::time::Instant::now());
                    }
                    return Err(TransportError::io("send", e));
                }
            }
        }
    }

    /// Adds the send counters to `s`.
    pub fn fill_stats(&self, s: &mut TransportStats) {
        s.sent_datagrams = self.sent_datagrams.load(Ordering::Relaxed);
        s.sent_bytes = self.sent_bytes.load(Ordering::Relaxed);
        s.send_errors = self.send_errors.load(Ordering::Relaxed);
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

/// One channel's sockets.
#[derive(Debug)]
pub struct UdpSocketTransport {
    /// Created by `open`, or by the first `join` with `receive_on_demand`.
    rx: OnceLock<UdpSocket>,
    tx: UdpSender,
    endpoint: Endpoint,
    interface: Option<Ipv4Addr>,
    /// Groups joined so far; its lock also serialises creating `rx`.
    joined: Mutex<Vec<Ipv4Addr>>,
    /// SO_RCVTIMEO currently set on `rx`, in µs (0: not yet set).
    read_timeout_us: AtomicU64,
    granted: AtomicU64,
    counters: Counters,
    /// The namespace's kernel IPv4 reassembly (failures, timeouts) when this transport opened.
    reassembly_base: Option<(u64, u64)>,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TransportError {
    let context = context.into();
    move |e| TransportError::io(context, e)
}

impl UdpSocketTransport {
    /// Opens the send socket for `ep` and, unless `ep.receive_on_demand`, the receive socket
    /// (joined to the base group in network mode).
    ///
    /// # Errors
    /// Socket creation, bind or membership failed; the error names the step.
    pub fn open(ep: &Endpoint) -> Result<Self, TransportError> {
        let interface = ep.interface.as_deref().map(resolve_interface).transpose()?;
        let t = Self {
            rx: OnceLock::new(),
            tx: UdpSender::open(ep)?,
            endpoint: ep.clone(),
            interface,
            joined: Mutex::new(Vec::new()),
            read_timeout_us: AtomicU64::new(0),
            granted: AtomicU64::new(0),
            counters: Counters::default(),
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
        let ep = &self.endpoint;
        let rx = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(io("create receive socket"))?;
        rx.set_reuse_address(true).map_err(io("SO_REUSEADDR"))?;
        // Only the groups joined here: without it Linux also hands this socket the traffic of
        // every group any other socket of the host joined on this port.
        sys::receive_only_joined_groups(&rx);
        self.granted.store(set_receive_buffer(&rx, ep.receive_buffer, ep.channel == Channel::Data), Ordering::Relaxed);
        let bind = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, ep.port);
        rx.bind(&bind.into()).map_err(io(format!("bind {bind}")))?;
        if ep.mode == Mode::Network {
            join_group(&rx, ep.group, self.interface)?;
            joined.push(ep.group);
        }
        let _ = self.rx.set(rx.into());
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

    fn recv(&self, buf: &mut [u8], timeout: Duration) -> Result<Option<RecvMeta>, TransportError> {
        let Some(rx) = self.rx.get() else {
            // Not receiving yet (`receive_on_demand` and no `join` so far).
            std::thread::sleep(timeout);
            return Ok(None);
        };
        let want = timeout.max(Duration::from_millis(1));
        let want_us = want.as_micros().min(u64::MAX as u128) as u64;
        if self.read_timeout_us.swap(want_us, Ordering::Relaxed) != want_us {
            rx.set_read_timeout(Some(want)).map_err(io("SO_RCVTIMEO"))?;
        }
        match rx.recv_from(buf) {
            Ok((n, from)) => {
                if n >= buf.len() {
                    // Cannot happen with a 64 KiB buffer for IPv4; counted if it does.
                    self.counters.truncated.fetch_add(1, Ordering::Relaxed);
                    return Ok(None);
                }
                self.counters.received_datagrams.fetch_add(1, Ordering::Relaxed);
                self.counters.received_bytes.fetch_add(n as u64, Ordering::Relaxed);
                Ok(Some(RecvMeta::new(n, from)))
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                Ok(None)
            }
            Err(e) => Err(TransportError::io("recv", e)),
        }
    }

    fn join(&self, group: Ipv4Addr) -> Result<(), TransportError> {
        let mut joined = self.joined.lock().expect("poisoned");
        self.start_receiving(&mut joined)?;
        if self.endpoint.mode != Mode::Network || joined.contains(&group) {
            return Ok(());
        }
        let rx = self.rx.get().expect("started above");
        join_group(&socket2::SockRef::from(rx), group, self.interface)?;
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
        s.os_dropped = self.rx.get().and_then(|rx| sys::socket_drops(&socket2::SockRef::from(rx))).unwrap_or(0);
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
}

/// The local address this transport receives on (for tests and diagnostics).
pub fn local_port(t: &UdpSocketTransport) -> Option<SocketAddr> {
    t.rx.get()?.local_addr().ok()
}
