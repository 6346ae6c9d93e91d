//! What a transport does: move whole UDP payloads for one channel. Fragmentation, decoding and
//! everything else happen above, once, for every transport.

use crate::config::{Config, Mode};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

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
    pub channel: Channel,
    pub mode: Mode,
    /// Destination of sent datagrams and the base group joined for receiving (network mode),
    /// or the broadcast address (local mode).
    pub group: Ipv4Addr,
    pub port: u16,
    pub ttl: u32,
    /// Interface name or IPv4 address; `None` lets the routing table decide.
    pub interface: Option<String>,
    pub multicast_loopback: bool,
    /// Requested receive buffer in bytes.
    pub receive_buffer: usize,
    /// Receive nothing until the first [`Transport::join`]: no receive socket, no membership,
    /// no capture route. A node sets it on the data channel, so a process that only publishes
    /// does not take a copy of every datagram it sends (multicast loopback) or of its peers'.
    pub receive_on_demand: bool,
}

impl Endpoint {
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
        }
    }
}

/// Details of one received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecvMeta {
    /// Bytes written to the caller's buffer.
    pub len: usize,
    /// Sender address and port: half of the reassembly key.
    pub source: SocketAddr,
}

impl RecvMeta {
    pub fn new(len: usize, source: SocketAddr) -> Self {
        Self { len, source }
    }
}

/// Transport counters; every field is monotonic.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct TransportStats {
    pub sent_datagrams: u64,
    pub sent_bytes: u64,
    pub send_errors: u64,
    pub received_datagrams: u64,
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
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("transport closed")]
    Closed,
}

impl TransportError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}

/// Takes datagrams on a transport's own receive thread (see [`Transport::set_sink`]).
pub type DatagramSink = std::sync::Arc<dyn Fn(&[u8], SocketAddr) + Send + Sync>;

/// Moves whole UDP payloads for one endpoint.
pub trait Transport: Send + Sync + fmt::Debug {
    /// Short name for logs and stats: `socket`, `npcap`, `loopback`.
    fn name(&self) -> &'static str;
    /// Sends one datagram made of `header` followed by `body` to the endpoint's destination.
    fn send(&self, header: &[u8], body: &[u8]) -> Result<(), TransportError>;
    /// Waits at most `timeout` for one datagram and copies it into `buf`;
    /// `Ok(None)` means nothing arrived, not a failure.
    fn recv(&self, buf: &mut [u8], timeout: Duration) -> Result<Option<RecvMeta>, TransportError>;
    /// Like [`Transport::recv`], but hands the datagram to `f` where it lies; a transport that
    /// already holds datagrams in memory (the capture queue) saves a copy. `scratch` is for
    /// transports that read into a caller's buffer (this default). `Ok(false)`: nothing arrived.
    fn recv_with(
        &self,
        scratch: &mut [u8],
        timeout: Duration,
        f: &mut dyn FnMut(&[u8], SocketAddr),
    ) -> Result<bool, TransportError> {
        Ok(match self.recv(scratch, timeout)? {
            Some(meta) => {
                f(&scratch[..meta.len], meta.source);
                true
            }
            None => false,
        })
    }
    /// Push style, for transports that receive on a thread of their own (the capture): with
    /// `Some(sink)` they call `sink` for every datagram from that thread instead of queueing it
    /// for `recv` (no thread hop, no copy); `None` detaches it, waiting for a call in progress
    /// to end. Returns false when the transport has no such thread (sockets, this default):
    /// the caller keeps calling `recv`.
    fn set_sink(&self, _sink: Option<DatagramSink>) -> bool {
        false
    }
    /// Additionally receives datagrams sent to `group` (network mode). In either mode the first
    /// call starts receiving on an endpoint opened with `receive_on_demand`.
    fn join(&self, group: Ipv4Addr) -> Result<(), TransportError>;
    fn stats(&self) -> TransportStats;
}

/// Opens transports for the channels a node needs.
pub trait TransportFactory: Send + Sync {
    /// # Errors
    /// The transport cannot be opened; the message says what to do.
    fn open(&self, endpoint: &Endpoint) -> Result<Box<dyn Transport>, TransportError>;
}

impl<F> TransportFactory for F
where
    F: Fn(&Endpoint) -> Result<Box<dyn Transport>, TransportError> + Send + Sync,
{
    fn open(&self, endpoint: &Endpoint) -> Result<Box<dyn Transport>, TransportError> {
        self(endpoint)
    }
}
