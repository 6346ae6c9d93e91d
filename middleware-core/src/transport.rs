//! What a transport does: move whole UDP payloads for one channel. Fragmentation, decoding and
//! everything else happen above, once, for every transport.

use crate::config::{Config, Mode};
pub use crate::fragment::{DatagramLease, Piece};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The two eCAL channels this crate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Port 14000: registration samples.
    Registration,
    /// Port 14002: topic data.
    Data,
}

/// Where one channel sends and listens, independent of how the datagrams move.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Endpoint {
    /// Registration or data.
    pub channel: Channel,
    /// Local (broadcast on the loopback network) or network (multicast).
    pub mode: Mode,
    /// Destination of sent datagrams and the base group joined for receiving (network mode),
    /// or the broadcast address (local mode).
    pub group: Ipv4Addr,
    /// UDP destination port, and the port received on.
    pub port: u16,
    /// TTL (hop limit) of sent datagrams.
    pub ttl: u32,
    /// Interface name or IPv4 address; `None` lets the routing table decide.
    pub interface: Option<String>,
    /// Whether this host's own receivers get our multicast (`IP_MULTICAST_LOOP`).
    pub multicast_loopback: bool,
    /// Requested receive buffer in bytes.
    pub receive_buffer: usize,
    /// Receive nothing until the first [`Transport::join`]: no receive socket, no membership,
    /// no capture route. A node sets it on the data channel, so a process that only publishes
    /// does not take a copy of every datagram it sends (multicast loopback) or of its peers'.
    pub receive_on_demand: bool,
    /// How long one datagram's send may wait for the OS to take it (`ENOBUFS`: the interface
    /// queue is full) before it fails and is counted (`udp.send_timeout_ms`).
    pub send_timeout: Duration,
}

impl Endpoint {
    /// The endpoint of `channel` as `config` describes it (receiving from the start; the node sets
    /// `receive_on_demand` on the data channel). The registration channel's receive buffer is capped
    /// at 8 MiB.
    pub fn from_config(config: &Config, channel: Channel) -> Self {
        Self {
            channel,
            mode: config.mode,
            group: config.destination(),
            port: match channel {
                Channel::Registration => config.registration_port,
                Channel::Data => config.data_port,
            },
            ttl: config.ttl(),
            interface: config.interface.clone(),
            multicast_loopback: config.multicast_loopback,
            // Registration samples are small; 8 MiB absorbs bursts from thousands of entities.
            receive_buffer: match channel {
                Channel::Registration => config.receive_buffer.min(8 << 20),
                Channel::Data => config.receive_buffer,
            },
            receive_on_demand: false,
            send_timeout: config.send_timeout,
        }
    }
}

/// Transport counters; every field is monotonic.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct TransportStats {
    /// Datagrams handed to the OS.
    pub sent_datagrams: u64,
    /// UDP payload bytes handed to the OS.
    pub sent_bytes: u64,
    /// Datagrams whose send failed (each is also returned as an error to the sender).
    pub send_errors: u64,
    /// Datagrams passed to the sink.
    pub received_datagrams: u64,
    /// UDP payload bytes passed to the sink.
    pub received_bytes: u64,
    /// Datagrams larger than the receive buffer (truncated by the OS) and dropped.
    pub truncated: u64,
    /// Drops the OS or capture library reported (e.g. pcap `ps_drop`, socket overflows).
    pub os_dropped: u64,
    /// The receive buffer size the OS granted.
    pub receive_buffer_granted: u64,
    /// Free-form description of the transport actually in use (e.g. why `auto` fell back).
    pub note: String,
    /// Transport-specific counters (e.g. capture drops, IP reassembly), by name.
    pub details: std::collections::BTreeMap<String, u64>,
}

/// Local trouble with a transport (never bad network input: that is counted, not returned).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// A system call failed (socket, bind, membership, send, capture open).
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the address or interface involved.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The transport cannot work here (no capture library, no permission, no interface); the
    /// text says what to do.
    #[error("{0}")]
    Unavailable(String),
    /// The transport was closed; nothing more can be sent.
    #[error("transport closed")]
    Closed,
}

impl TransportError {
    /// A [`TransportError::Io`] with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}

/// Takes the datagrams a transport receives, on the transport's own receive thread(s).
///
/// The one receive model: every transport pushes; nobody pulls. A transport calls
/// [`DatagramSink::datagram`] for every datagram, where it lies (no copy for the sink), and
/// [`DatagramSink::tick`] at least every [`TICK`] while it is open, with or without traffic, so
/// the sink can expire partial state. Calls may come from several threads at once (a capture
/// transport runs a thread per device). A transport never holds a lock of its own across
/// these calls, and [`SinkSlot`] catches a panic escaping one, so receiving goes on.
pub trait DatagramSink: Send + Sync {
    /// One datagram of the channel; `now` is when it was read.
    fn datagram(&self, datagram: &[u8], source: SocketAddr, now: Instant);
    /// Housekeeping: at least every [`TICK`].
    fn tick(&self, now: Instant);

    /// Datagrams of `segment` bytes back to back in one buffer, the last possibly shorter, each
    /// a datagram of the channel: what a socket's receive offload (Linux `UDP_GRO`) hands over,
    /// cut at the segment size the kernel reports. Default: [`datagram`](Self::datagram) for
    /// each; a sink may take them at once (the core's takes one lock for the buffer).
    fn datagrams(&self, buffer: &[u8], segment: usize, source: SocketAddr, now: Instant) {
        for d in buffer.chunks(segment.max(1)) {
            self.datagram(d, source, now);
        }
    }

    /// A datagram of `len` bytes arriving in pieces, in order (the UDP payload of an IPv4
    /// datagram cut into fragments), whose first bytes `first` are here: a sink that can write
    /// it straight to where its bytes end up returns a lease, saving the transport a buffer and
    /// a copy. The transport then [pushes](DatagramLease::push) each next piece into it as it
    /// arrives (no call into the sink) and ends with [`finish_datagram`](Self::finish_datagram)
    /// once nothing remains, or [`abort_datagram`](Self::abort_datagram) when a piece comes out
    /// of order, to go on the buffered way and call [`datagram`](Self::datagram) at the end.
    /// Default: `None`, always the buffered way.
    fn begin_datagram(&self, first: &[u8], len: usize, source: SocketAddr, now: Instant) -> Option<DatagramLease> {
        let _ = (first, len, source, now);
        None
    }

    /// Hands back a lease from [`begin_datagram`](Self::begin_datagram) whose datagram is
    /// complete: what [`datagram`](Self::datagram) does with a whole datagram happens now.
    fn finish_datagram(&self, lease: DatagramLease, now: Instant) {
        let _ = (lease, now);
    }

    /// Hands back an unfinished lease. With `out`, the datagram's bytes so far are appended to
    /// it so the transport can go on the buffered way; returns whether they were (`false`: the
    /// datagram is lost, already counted by the sink).
    fn abort_datagram(&self, lease: DatagramLease, out: Option<&mut Vec<u8>>) -> bool {
        let _ = (lease, out);
        false
    }
}

/// The longest a transport lets pass between two [`DatagramSink::tick`] calls.
pub const TICK: Duration = Duration::from_millis(100);

/// Moves whole UDP payloads for one endpoint: sends, and pushes what it receives to the sink it
/// was opened with ([`TransportFactory::open`]).
pub trait Transport: Send + Sync + fmt::Debug {
    /// Short name for logs and stats: `socket`, `npcap`, `loopback`.
    fn name(&self) -> &'static str;
    /// Sends one datagram made of `header` followed by `body` to the endpoint's destination.
    fn send(&self, header: &[u8], body: &[u8]) -> Result<(), TransportError>;
    /// Sends `datagrams` in order, each one datagram of its header followed by its body, in as
    /// few system calls as the OS allows (`udp.send_mode = frames`: runs of equal-sized
    /// datagrams go out as one segmentation offload buffer). Stops at the first failure.
    /// Default: [`send`](Self::send) for each.
    fn send_batch(&self, datagrams: &[Piece<'_>]) -> Result<(), TransportError> {
        datagrams.iter().try_for_each(|d| self.send(&d.header, d.body))
    }
    /// The largest UDP payload that leaves this host in one frame toward the endpoint's
    /// destination (the outgoing interface's MTU minus the IPv4 and UDP headers), where known:
    /// the datagram size of `udp.send_mode = frames` with `udp.frame_size = auto`.
    fn frame_payload_size(&self) -> Option<usize> {
        None
    }
    /// Whether [`send_batch`](Self::send_batch) hands runs of datagrams to the OS as one buffer
    /// that the device cuts (segmentation offload): what `udp.send_mode = auto` asks.
    fn segmentation_offload(&self) -> bool {
        false
    }
    /// Additionally receives datagrams sent to `group` (network mode). In either mode the first
    /// call starts receiving on an endpoint opened with `receive_on_demand`.
    fn join(&self, group: Ipv4Addr) -> Result<(), TransportError>;
    /// A snapshot of the counters.
    fn stats(&self) -> TransportStats;
    /// Stops receiving. When it returns, the sink is not called again and no call to it is in
    /// progress on another thread; called from the transport's own receive thread (from inside
    /// the sink) it does not wait for that thread, whose call ends after it returns. The
    /// sink is released with the transport. Idempotent; dropping the transport closes it.
    fn close(&self);
    /// Whether this host's other sockets get a copy of what this transport sends to its group
    /// (multicast loopback; network mode). The node turns it on for the data channel while a
    /// subscriber on this host is registered for one of its publishers' topics, and off
    /// otherwise (`network.multicast_loopback = true`): a datagram looped back for nobody costs
    /// the sending host a second pass through its network stack. Transports without such a
    /// switch ignore it (the default).
    fn set_multicast_loopback(&self, _on: bool) {}
}

/// Segments one segmentation offload buffer may carry (Linux `UDP_MAX_SEGMENTS`: 64 until 6.11).
pub const MAX_SEGMENTS: usize = 64;

/// Cuts `datagrams` into the runs a segmentation offload send takes as one buffer each: up to
/// [`MAX_SEGMENTS`] consecutive datagrams of the first one's size, the last of a run possibly
/// shorter, at most 65 507 bytes in all (one IPv4 datagram's payload). A run of one is sent
/// as a plain datagram. Yields each run's index range and segment size.
pub fn offload_runs<'a>(datagrams: &'a [Piece<'_>]) -> impl Iterator<Item = (std::ops::Range<usize>, usize)> + 'a {
    let len = |d: &Piece<'_>| d.header.len() + d.body.len();
    let mut i = 0;
    std::iter::from_fn(move || {
        let first = datagrams.get(i)?;
        let size = len(first);
        let (start, mut total) = (i, size);
        i += 1;
        while let Some(d) = datagrams.get(i) {
            let n = len(d);
            if i - start >= MAX_SEGMENTS || n > size || total + n > crate::wire::MAX_DATAGRAM_LEN {
                break;
            }
            total += n;
            i += 1;
            if n < size {
                break;
            }
        }
        Some((start..i, size))
    })
}

/// Opens transports for the channels a node needs.
pub trait TransportFactory: Send + Sync {
    /// # Errors
    /// The transport cannot be opened; the message says what to do.
    fn open(&self, endpoint: &Endpoint, sink: Arc<dyn DatagramSink>) -> Result<Box<dyn Transport>, TransportError>;
}

impl<F> TransportFactory for F
where
    F: Fn(&Endpoint, Arc<dyn DatagramSink>) -> Result<Box<dyn Transport>, TransportError> + Send + Sync,
{
    fn open(&self, endpoint: &Endpoint, sink: Arc<dyn DatagramSink>) -> Result<Box<dyn Transport>, TransportError> {
        self(endpoint, sink)
    }
}

mod slot;
pub use slot::{current_thread_id, panic_message, ReceiveThread, SinkSlot, CLOSE_WAIT};
