//! Configuration: defaults, then a TOML file, then environment variables, then code.
//!
//! Every setting has one dotted key (`network.ttl`). In a file it is written as TOML
//! (`[network]` / `ttl = 3`); in the environment as `MW_` + the key in upper case with dots
//! replaced by underscores (`MW_NETWORK_TTL=3`); in code as [`Config::set`]. All three go through
//! the same parser, so a bad value is always reported the same way: the key, where it came from,
//! the value and what is accepted.
//!
//! ```
//! use middleware_core::config::{Config, ConfigError, Mode, Origin};
//!
//! let mut config = Config::default(); // eCAL's defaults: local mode, ports 14000 / 14002
//! config.apply_toml("mode = \"network\"\n[network]\nttl = 2\n", Origin::Code)?;
//! config.set("udp.receive_buffer", "16MiB")?;
//! assert_eq!((config.mode(), config.network_ttl(), config.receive_buffer()), (Mode::Network, 2, 16 << 20));
//!
//! // A mistake names the key, where it came from and what is accepted.
//! let err = config.set("network.ttl", "300").unwrap_err();
//! assert!(matches!(err, ConfigError::InvalidValue { .. }));
//! assert!(err.to_string().contains("0..=255"), "{err}");
//! assert!(matches!(config.set("network.tll", "2"), Err(ConfigError::UnknownKey { .. })));
//! # Ok::<(), ConfigError>(())
//! ```
//!
//! A `Config` holds only what the parser accepts: its fields are private, read through getters
//! of the same names, and written only by [`Config::set`], [`Config::set_all`], files and the
//! environment (a refused value changes nothing). So a value the send path could not handle
//! cannot be put there from code:
//!
//! ```compile_fail
//! let mut config = middleware_core::config::Config::default();
//! config.max_datagram_size = 10; // private: `config.set("udp.max_datagram_size", "10")` is refused
//! ```
//!
//! | key | default | accepted |
//! |---|---|---|
//! | `transport` | `socket` | `socket`, `npcap`, `auto` |
//! | `mode` | `local` | `local` (broadcast on 127.255.255.255, this host only; eCAL's default), `network` (multicast, cross-host) |
//! | `network.group` | `239.0.0.1` | IPv4 multicast address |
//! | `network.mask` | `255.255.255.240` | IPv4 mask for the topic group hash |
//! | `network.group_mapping` | `v2` | `v2`, `v1` |
//! | `network.ttl` | `3` | 0..=255 |
//! | `network.interface` | (route decides) | interface name or IPv4 address |
//! | `network.multicast_loopback` | `true` | `true`: same-host peers hear our registration always and our data while one of them is registered as a subscriber of our topics (data is not looped back into this host for nobody); `always`: data always too (same-host listeners that do not register); `false`: never |
//! | `local.group` | `127.255.255.255` | IPv4 broadcast address |
//! | `local.ttl` | `1` | 0..=255 |
//! | `ports.registration` | `14000` | 1..=65535 |
//! | `ports.data` | `14002` | 1..=65535 |
//! | `udp.receive_buffer` | `64MiB` | bytes, with optional `KiB`/`MiB`/`GiB` |
//! | `udp.max_datagram_size` | `65507` | 25..=65507 |
//! | `udp.send_mode` | `ecal` | `ecal` (messages in datagrams of up to `udp.max_datagram_size`, which IP fragmentation cuts into frames, as eCAL 6.1 sends), `frames` (messages in eCAL fragments that each fit one frame, `udp.frame_size`, sent many per system call with segmentation offload where the OS has it: no IP fragmentation), `auto` (`frames` where the data transport has segmentation offload, `ecal` elsewhere); data channel only |
//! | `udp.frame_size` | `auto` | `auto` (the outgoing interface's MTU minus 28, or 1472 where it cannot be read), or the UDP payload bytes of one frame datagram, 25..=65507 |
//! | `udp.send_timeout_ms` | `1000` | 1..=10^12: how long one datagram's send waits while the OS says `ENOBUFS`, then fails (counted) |
//! | `reassembly.timeout_ms` | `5000` | 1..=10^12 |
//! | `reassembly.max_message_size` | `128MiB` | bytes |
//! | `reassembly.max_partial_messages` | `256` | 1.. |
//! | `reassembly.max_buffered_bytes` | `256MiB` | bytes |
//! | `registration.refresh_ms` | `1000` | 10..=10^12 |
//! | `registration.timeout_ms` | `10000` | > refresh, ..=10^12 |
//! | `registration.max_table_bytes` | `64MiB` | bytes, at least 1MiB: what remote entities and processes may hold together (strings, descriptors, 512 B each); past it new or grown entries are ignored, counted `registration_over_budget` |
//! | `registration.max_message_size` | `4MiB` | bytes, 64KiB..=4GiB: largest registration message reassembled |
//! | `registration.max_buffered_bytes` | `16MiB` | bytes, at least 64KiB: partial registration messages held, apart from the data channel's |
//! | `registration.loopback` | `true` | bool: see this process's own entities |
//! | `subscriber.drop_out_of_order` | `true` | bool |
//! | `subscriber.queue_capacity` | `1024` | 1..: messages held for `recv` before the oldest is dropped |
//! | `subscriber.queue_bytes` | `64MiB` | bytes held for `recv` (payloads plus 64 bytes each) before the oldest is dropped; a single message larger than this is still queued alone |
//! | `npcap.*` | | options of the packet-capture transport, validated by it (see its crate docs) |
//! | `unit_name` | program name | string shown by monitors |
//! | `host_name` | `gethostname()` | string; eCAL treats equal host names as the same host |

use crate::fragment::ReassemblyConfig;
use crate::topic_group::GroupMapping;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// What a queued message costs a subscriber's byte bound beyond its payload (its bookkeeping),
/// so that a flood of empty messages is bounded in bytes too.
pub const QUEUE_ITEM_OVERHEAD: usize = 64;

/// The largest value of a `*_ms` key (about 31 years): a deadline that far is none, and
/// anything derived from such a value (a multiple, a sum with the clock) stays representable.
pub const MAX_MS: u64 = 1_000_000_000_000;

/// Prefix of the environment variables that override settings.
pub const ENV_PREFIX: &str = "MW_";
/// Environment variable naming a config file.
pub const ENV_CONFIG_FILE: &str = "MW_CONFIG";

/// Which transport moves the datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportKind {
    /// Ordinary UDP sockets.
    #[default]
    Socket,
    /// Receive through packet capture (libpcap / Npcap), send through sockets.
    Npcap,
    /// Capture when the library and permission are available, otherwise sockets.
    Auto,
}

impl FromStr for TransportKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "socket" => Ok(Self::Socket),
            "npcap" | "pcap" => Ok(Self::Npcap),
            "auto" => Ok(Self::Auto),
            _ => Err("one of socket, npcap, auto".into()),
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Socket => "socket",
            Self::Npcap => "npcap",
            Self::Auto => "auto",
        })
    }
}

/// `udp.send_mode`: how a publisher cuts a message into datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SendMode {
    /// Datagrams of up to `udp.max_datagram_size` (65 507 B), one system call each; IP
    /// fragmentation cuts them into frames. What eCAL 6.1 sends.
    #[default]
    Ecal,
    /// eCAL fragments that each fit one frame (`udp.frame_size`), sent many per system call
    /// (`UDP_SEGMENT` on Linux, `sendmmsg` without it). No IP fragments: a receiver reassembles
    /// nothing below eCAL, and one lost frame costs one fragment's worth, not a 64 KiB datagram.
    /// eCAL receivers accept datagrams of any size.
    Frames,
    /// `Frames` where the data transport has segmentation offload, `Ecal` elsewhere.
    Auto,
}

impl FromStr for SendMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ecal" => Ok(Self::Ecal),
            "frames" => Ok(Self::Frames),
            "auto" => Ok(Self::Auto),
            _ => Err("one of ecal, frames, auto".into()),
        }
    }
}

impl fmt::Display for SendMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ecal => "ecal",
            Self::Frames => "frames",
            Self::Auto => "auto",
        })
    }
}

/// eCAL's `communication_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Multicast to `network.group`; peers on other hosts.
    Network,
    /// Broadcast on the loopback network; this host only. eCAL's default, so nothing leaves
    /// the host until `mode = "network"` is chosen.
    #[default]
    Local,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "network" => Ok(Self::Network),
            "local" => Ok(Self::Local),
            _ => Err("one of network, local".into()),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Network => "network",
            Self::Local => "local",
        })
    }
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A TOML configuration file (its path).
    File(PathBuf),
    /// An environment variable (its name, e.g. `MW_NETWORK_TTL`).
    Env(String),
    /// [`Config::set`] called by the program.
    Code,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "file {}", p.display()),
            Self::Env(v) => write!(f, "environment variable {v}"),
            Self::Code => f.write_str("code"),
        }
    }
}

/// A configuration problem, naming the key and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A known key with a value it does not accept.
    #[error("config key `{key}` ({origin}): invalid value `{value}`; expected {expected}")]
    InvalidValue {
        /// The dotted key (`network.ttl`).
        key: String,
        /// Where the value came from.
        origin: Origin,
        /// The value as given.
        value: String,
        /// What the key accepts (`an integer 0..=255`).
        expected: String,
    },
    /// A key this version does not know (often a typo); nothing is silently ignored.
    #[error("unknown config key `{key}` ({origin}); known keys: {known}")]
    UnknownKey {
        /// The key as given.
        key: String,
        /// Where it came from.
        origin: Origin,
        /// The known keys, comma separated, for the message.
        known: String,
    },
    /// The configuration file could not be read or is not valid TOML.
    #[error("cannot read config file {path}: {reason}")]
    File {
        /// The file's path.
        path: PathBuf,
        /// What went wrong (I/O error or TOML parse error with its position).
        reason: String,
    },
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `transport`: which transport receives (sending always uses sockets).
    pub(crate) transport: TransportKind,
    /// `mode`: local (this host) or network (multicast, cross-host).
    pub(crate) mode: Mode,
    /// `network.group`: base multicast address of network mode; topics map into the groups under
    /// `network.mask` (see [`crate::topic_group`]).
    pub(crate) network_group: Ipv4Addr,
    /// `network.mask`: how many multicast groups topics spread over (`255.255.255.240`: 16).
    pub(crate) network_mask: Ipv4Addr,
    /// `network.group_mapping`: eCAL's v2 (default) or v1 topic-to-group hash.
    pub(crate) group_mapping: GroupMapping,
    /// `network.ttl`: multicast TTL of network mode (hops through routers; 0 keeps it on the host).
    pub(crate) network_ttl: u32,
    /// `network.interface`: interface (name or IPv4 address) to send and join groups on; `None`
    /// lets the routing table decide.
    pub(crate) interface: Option<String>,
    /// `network.multicast_loopback`: this host's processes hear our multicast (`true`:
    /// registration always, data while a subscriber on this host is registered; `always`: data
    /// always too; `false`: never).
    pub(crate) multicast_loopback: bool,
    /// `network.multicast_loopback = always`: data is looped back even with no same-host
    /// subscriber registered (for listeners on this host that do not register).
    pub(crate) multicast_loopback_always: bool,
    /// `local.group`: broadcast address of local mode.
    pub(crate) local_group: Ipv4Addr,
    /// `local.ttl`: TTL of local mode's datagrams.
    pub(crate) local_ttl: u32,
    /// `ports.registration`: UDP port of registration samples (eCAL: 14000).
    pub(crate) registration_port: u16,
    /// `ports.data`: UDP port of data samples (eCAL: 14002).
    pub(crate) data_port: u16,
    /// `udp.receive_buffer`: socket receive buffer asked of the OS in bytes (`SO_RCVBUF`); the
    /// OS may grant less, which the socket transport logs. The capture transport's buffer is
    /// `npcap.buffer_size`.
    pub(crate) receive_buffer: usize,
    /// `udp.max_datagram_size`: largest UDP payload sent, in bytes; longer messages are cut into
    /// eCAL fragments of this size (eCAL 6.1: 65 507).
    pub(crate) max_datagram_size: usize,
    /// `udp.send_mode`: how data messages are cut into datagrams.
    pub(crate) send_mode: SendMode,
    /// `udp.frame_size`: UDP payload bytes of one datagram in `frames` mode; `None`: from the
    /// outgoing interface's MTU ([`crate::Transport::frame_payload_size`]).
    pub(crate) frame_size: Option<usize>,
    /// `reassembly.*`: bounds of eCAL message reassembly (time, message size, partial messages and
    /// bytes held).
    pub(crate) reassembly: ReassemblyConfig,
    /// `registration.refresh_ms`: how often this process sends its registration (eCAL: 1 s).
    pub(crate) registration_refresh: Duration,
    /// `registration.timeout_ms`: a remote entity or process not heard for this long is forgotten.
    pub(crate) registration_timeout: Duration,
    /// `registration.max_table_bytes`: what the table of remote entities and processes may hold
    /// (their strings and descriptors, plus 512 bytes each); past it new or grown entries are
    /// ignored and counted (`registration_over_budget`).
    pub(crate) registration_table_bytes: usize,
    /// `registration.max_message_size`: the largest registration message reassembled (a
    /// sample with a large datatype descriptor spans several datagrams).
    pub(crate) registration_max_message: usize,
    /// `registration.max_buffered_bytes`: bytes held in partial registration messages, apart
    /// from the data channel's `reassembly.max_buffered_bytes` (a flood on one port cannot take
    /// the other's).
    pub(crate) registration_buffered_bytes: usize,
    /// `registration.loopback`: this process's own entities appear in its remote table (and its own
    /// publishers reach its own subscribers).
    pub(crate) registration_loopback: bool,
    /// `subscriber.drop_out_of_order`: a message older (by its publisher's clock) than one already
    /// delivered is dropped and counted, as eCAL does.
    pub(crate) drop_out_of_order: bool,
    /// `subscriber.queue_capacity`: messages a subscriber's queue holds for `recv` before the oldest
    /// is dropped (counted).
    pub(crate) queue_capacity: usize,
    /// Bytes a subscriber's queue holds at most (payload + [`QUEUE_ITEM_OVERHEAD`] per message).
    pub(crate) queue_bytes: usize,
    /// Longest wait of one datagram's send for the OS (`ENOBUFS`).
    pub(crate) send_timeout: Duration,
    /// `unit_name`: the node name monitors show; `None`: the program's name.
    pub(crate) unit_name: Option<String>,
    /// `host_name`: the host name written into registration; `None`: the system's. eCAL treats equal
    /// host names as one host (local mode accepts only its own).
    pub(crate) host_name: Option<String>,
    /// Keys under `npcap.` (without the prefix), parsed and validated by the pcap transport,
    /// which owns them.
    pub(crate) npcap: std::collections::BTreeMap<String, String>,
    /// The configuration file applied last, if any (reported in the process registration as
    /// eCAL's `config_file_path`).
    pub(crate) file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            transport: TransportKind::Socket,
            mode: Mode::Local,
            network_group: Ipv4Addr::new(239, 0, 0, 1),
            network_mask: Ipv4Addr::new(255, 255, 255, 240),
            group_mapping: GroupMapping::V2,
            network_ttl: 3,
            interface: None,
            multicast_loopback: true,
            multicast_loopback_always: false,
            local_group: Ipv4Addr::new(127, 255, 255, 255),
            local_ttl: 1,
            registration_port: 14000,
            data_port: 14002,
            receive_buffer: 64 << 20,
            max_datagram_size: crate::wire::MAX_DATAGRAM_LEN,
            send_mode: SendMode::Ecal,
            frame_size: None,
            reassembly: ReassemblyConfig::default(),
            registration_refresh: Duration::from_secs(1),
            registration_timeout: Duration::from_secs(10),
            registration_table_bytes: crate::registration::DEFAULT_TABLE_BYTES,
            registration_max_message: 4 << 20,
            registration_buffered_bytes: 16 << 20,
            registration_loopback: true,
            drop_out_of_order: true,
            queue_capacity: 1024,
            queue_bytes: 64 << 20,
            send_timeout: Duration::from_secs(1),
            unit_name: None,
            host_name: None,
            npcap: std::collections::BTreeMap::new(),
            file: None,
        }
    }
}

/// Reading the configuration: one getter per setting, named as the field it reads. Values are
/// set only through the parser ([`Config::set`], [`Config::set_all`], files, the environment),
/// so a `Config` always holds what the parser accepts.
impl Config {
    /// `transport`: which transport receives (sending always uses sockets).
    pub fn transport(&self) -> TransportKind {
        self.transport
    }

    /// `mode`: local (this host) or network (multicast, cross-host).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// `network.group`: base multicast address of network mode; topics map into the groups under
    /// `network.mask` (see [`crate::topic_group`]).
    pub fn network_group(&self) -> Ipv4Addr {
        self.network_group
    }

    /// `network.mask`: how many multicast groups topics spread over (`255.255.255.240`: 16).
    pub fn network_mask(&self) -> Ipv4Addr {
        self.network_mask
    }

    /// `network.group_mapping`: eCAL's v2 (default) or v1 topic-to-group hash.
    pub fn group_mapping(&self) -> GroupMapping {
        self.group_mapping
    }

    /// `network.ttl`: multicast TTL of network mode (hops through routers; 0 keeps it on the host).
    pub fn network_ttl(&self) -> u32 {
        self.network_ttl
    }

    /// `network.interface`: interface (name or IPv4 address) to send and join groups on; `None`
    /// lets the routing table decide.
    pub fn interface(&self) -> Option<&str> {
        self.interface.as_deref()
    }

    /// `network.multicast_loopback`: this host's processes hear our multicast (`true`:
    /// registration always, data while a subscriber on this host is registered; `always`: data
    /// always too; `false`: never).
    pub fn multicast_loopback(&self) -> bool {
        self.multicast_loopback
    }

    /// `network.multicast_loopback = always`: data is looped back even with no same-host
    /// subscriber registered (for listeners on this host that do not register).
    pub fn multicast_loopback_always(&self) -> bool {
        self.multicast_loopback_always
    }

    /// `local.group`: broadcast address of local mode.
    pub fn local_group(&self) -> Ipv4Addr {
        self.local_group
    }

    /// `local.ttl`: TTL of local mode's datagrams.
    pub fn local_ttl(&self) -> u32 {
        self.local_ttl
    }

    /// `ports.registration`: UDP port of registration samples (eCAL: 14000).
    pub fn registration_port(&self) -> u16 {
        self.registration_port
    }

    /// `ports.data`: UDP port of data samples (eCAL: 14002).
    pub fn data_port(&self) -> u16 {
        self.data_port
    }

    /// `udp.receive_buffer`: socket receive buffer asked of the OS in bytes (`SO_RCVBUF`); the
    /// OS may grant less, which the socket transport logs. The capture transport's buffer is
    /// `npcap.buffer_size`.
    pub fn receive_buffer(&self) -> usize {
        self.receive_buffer
    }

    /// `udp.max_datagram_size`: largest UDP payload sent, in bytes; longer messages are cut into
    /// eCAL fragments of this size (eCAL 6.1: 65 507).
    pub fn max_datagram_size(&self) -> usize {
        self.max_datagram_size
    }

    /// `udp.send_mode`: how data messages are cut into datagrams.
    pub fn send_mode(&self) -> SendMode {
        self.send_mode
    }

    /// `udp.frame_size`: UDP payload bytes of one datagram in `frames` mode; `None`: from the
    /// outgoing interface's MTU ([`crate::Transport::frame_payload_size`]).
    pub fn frame_size(&self) -> Option<usize> {
        self.frame_size
    }

    /// `reassembly.*`: bounds of eCAL message reassembly (time, message size, partial messages and
    /// bytes held).
    pub fn reassembly(&self) -> &ReassemblyConfig {
        &self.reassembly
    }

    /// `registration.refresh_ms`: how often this process sends its registration (eCAL: 1 s).
    pub fn registration_refresh(&self) -> Duration {
        self.registration_refresh
    }

    /// `registration.timeout_ms`: a remote entity or process not heard for this long is forgotten.
    pub fn registration_timeout(&self) -> Duration {
        self.registration_timeout
    }

    /// `registration.max_table_bytes`: what the table of remote entities and processes may hold
    /// (their strings and descriptors, plus 512 bytes each); past it new or grown entries are
    /// ignored and counted (`registration_over_budget`).
    pub fn registration_table_bytes(&self) -> usize {
        self.registration_table_bytes
    }

    /// `registration.max_message_size`: the largest registration message reassembled (a
    /// sample with a large datatype descriptor spans several datagrams).
    pub fn registration_max_message(&self) -> usize {
        self.registration_max_message
    }

    /// `registration.max_buffered_bytes`: bytes held in partial registration messages, apart
    /// from the data channel's `reassembly.max_buffered_bytes` (a flood on one port cannot take
    /// the other's).
    pub fn registration_buffered_bytes(&self) -> usize {
        self.registration_buffered_bytes
    }

    /// `registration.loopback`: this process's own entities appear in its remote table (and its own
    /// publishers reach its own subscribers).
    pub fn registration_loopback(&self) -> bool {
        self.registration_loopback
    }

    /// `subscriber.drop_out_of_order`: a message older (by its publisher's clock) than one already
    /// delivered is dropped and counted, as eCAL does.
    pub fn drop_out_of_order(&self) -> bool {
        self.drop_out_of_order
    }

    /// `subscriber.queue_capacity`: messages a subscriber's queue holds for `recv` before the oldest
    /// is dropped (counted).
    pub fn queue_capacity(&self) -> usize {
        self.queue_capacity
    }

    /// Bytes a subscriber's queue holds at most (payload + [`QUEUE_ITEM_OVERHEAD`] per message).
    pub fn queue_bytes(&self) -> usize {
        self.queue_bytes
    }

    /// Longest wait of one datagram's send for the OS (`ENOBUFS`).
    pub fn send_timeout(&self) -> Duration {
        self.send_timeout
    }

    /// `unit_name`: the node name monitors show; `None`: the program's name.
    pub fn unit_name(&self) -> Option<&str> {
        self.unit_name.as_deref()
    }

    /// `host_name`: the host name written into registration; `None`: the system's. eCAL treats equal
    /// host names as one host (local mode accepts only its own).
    pub fn host_name(&self) -> Option<&str> {
        self.host_name.as_deref()
    }

    /// Keys under `npcap.` (without the prefix), parsed and validated by the pcap transport,
    /// which owns them.
    pub fn npcap(&self) -> &std::collections::BTreeMap<String, String> {
        &self.npcap
    }

    /// The configuration file applied last, if any (reported in the process registration as
    /// eCAL's `config_file_path`).
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }
}

/// All keys, in documentation order.
pub const KEYS: &[&str] = &[
    "transport",
    "mode",
    "network.group",
    "network.mask",
    "network.group_mapping",
    "network.ttl",
    "network.interface",
    "network.multicast_loopback",
    "local.group",
    "local.ttl",
    "ports.registration",
    "ports.data",
    "udp.receive_buffer",
    "udp.max_datagram_size",
    "udp.send_mode",
    "udp.frame_size",
    "udp.send_timeout_ms",
    "reassembly.timeout_ms",
    "reassembly.max_message_size",
    "reassembly.max_partial_messages",
    "reassembly.max_buffered_bytes",
    "registration.refresh_ms",
    "registration.timeout_ms",
    "registration.max_table_bytes",
    "registration.max_message_size",
    "registration.max_buffered_bytes",
    "registration.loopback",
    "subscriber.drop_out_of_order",
    "subscriber.queue_capacity",
    "subscriber.queue_bytes",
    "unit_name",
    "host_name",
];

/// Parses a byte size: a plain integer or one with a `KiB`, `MiB`, `GiB` (or `K`, `M`, `G`) suffix.
pub fn parse_bytes(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().ok()?;
    let mul: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mul)
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn parse_range<T: FromStr + PartialOrd + Copy>(s: &str, lo: T, hi: T) -> Option<T> {
    s.trim().parse::<T>().ok().filter(|v| *v >= lo && *v <= hi)
}

impl Config {
    /// Defaults, then the file named by `path` (or by `MW_CONFIG` when `path` is `None`), then
    /// the environment.
    ///
    /// # Errors
    /// The first bad key or value, or an unreadable file.
    ///
    /// Rules between keys (`registration.timeout_ms` above `registration.refresh_ms`) are checked
    /// once every source is applied, so neither the order of a file's keys nor which source sets
    /// which key matters.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut c = Self::default();
        let env_path = std::env::var_os(ENV_CONFIG_FILE).map(PathBuf::from);
        let mut last = Origin::Code;
        if let Some(p) = path.map(Path::to_path_buf).or(env_path) {
            c.apply_file_unchecked(&p)?;
            last = Origin::File(p);
        }
        let vars: Vec<(String, String)> = std::env::vars().collect();
        last = env_origin(&vars).unwrap_or(last);
        c.apply_env_unchecked(vars)?;
        c.check_rules(&last)?;
        Ok(c)
    }

    /// Applies a TOML file: all of it, or (on error) nothing.
    ///
    /// # Errors
    /// Unreadable or unparsable file, unknown key, bad value, a rule between keys broken.
    pub fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        self.transaction(&Origin::File(path.into()), |c| c.apply_file_unchecked(path))
    }

    fn apply_file_unchecked(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::File { path: path.into(), reason: e.to_string() })?;
        self.apply_toml_unchecked(&text, Origin::File(path.into()))?;
        self.file = Some(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()));
        Ok(())
    }

    /// Applies TOML text: all of it, or (on error) nothing.
    ///
    /// # Errors
    /// Unparsable text, unknown key, bad value, a rule between keys broken.
    pub fn apply_toml(&mut self, text: &str, origin: Origin) -> Result<(), ConfigError> {
        let o = origin.clone();
        self.transaction(&o, |c| c.apply_toml_unchecked(text, origin))
    }

    fn apply_toml_unchecked(&mut self, text: &str, origin: Origin) -> Result<(), ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::File {
            path: match &origin {
                Origin::File(p) => p.clone(),
                _ => PathBuf::from("<text>"),
            },
            reason: e.to_string(),
        })?;
        let mut leaves = Vec::new();
        flatten("", &toml::Value::Table(table), &mut leaves);
        for (key, value) in leaves {
            self.assign(&key, &value, origin.clone())?;
        }
        Ok(())
    }

    /// Applies `MW_*` variables from `vars` (pass `std::env::vars()`): all of them, or (on
    /// error) none. `MW_CONFIG` is skipped.
    ///
    /// # Errors
    /// A variable with the prefix that names no key, a bad value, a rule between keys broken.
    pub fn apply_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let origin = env_origin(&vars).unwrap_or(Origin::Code);
        self.transaction(&origin, |c| c.apply_env_unchecked(vars))
    }

    /// Sets several keys from code at once: all of them, or (on error) none; rules between keys
    /// are checked once all are set (so `registration.refresh_ms` may grow past the old
    /// `registration.timeout_ms` together with it).
    ///
    /// # Errors
    /// Unknown key, bad value, a rule between keys broken.
    pub fn set_all<'a>(&mut self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<(), ConfigError> {
        self.transaction(&Origin::Code, |c| {
            for (k, v) in pairs {
                c.assign(k, v, Origin::Code)?;
            }
            Ok(())
        })
    }

    /// Runs `f` on a copy and keeps it only when `f` and the rules between keys pass.
    fn transaction(
        &mut self,
        origin: &Origin,
        f: impl FnOnce(&mut Self) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        let mut next = self.clone();
        f(&mut next)?;
        next.check_rules(origin)?;
        *self = next;
        Ok(())
    }

    /// The rules between keys.
    fn check_rules(&self, origin: &Origin) -> Result<(), ConfigError> {
        if self.registration_timeout <= self.registration_refresh {
            return Err(ConfigError::InvalidValue {
                key: "registration.timeout_ms".into(),
                origin: origin.clone(),
                value: self.registration_timeout.as_millis().to_string(),
                expected: format!(
                    "more than registration.refresh_ms ({}); set both together (Config::set_all, or one file)",
                    self.registration_refresh.as_millis()
                ),
            });
        }
        Ok(())
    }

    fn apply_env_unchecked(&mut self, vars: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if name == ENV_CONFIG_FILE || name == "MW_LOG" {
                continue;
            }
            let wanted = rest.to_ascii_lowercase();
            let npcap_key = wanted.strip_prefix("npcap_").map(|k| format!("npcap.{k}"));
            let key = KEYS
                .iter()
                .find(|k| k.replace('.', "_") == wanted)
                .map(|k| k.to_string())
                .or(npcap_key)
                .unwrap_or(wanted);
            self.assign(&key, &value, Origin::Env(name.clone()))?;
        }
        Ok(())
    }

    /// Sets one key from code; a value refused (by the key, or by a rule between keys) leaves
    /// the configuration as it was.
    ///
    /// # Errors
    /// Unknown key, bad value, a rule between keys broken (set related keys with
    /// [`Config::set_all`]).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        self.transaction(&Origin::Code, |c| c.assign(key, value, Origin::Code))
    }

    /// Parses and assigns one key; the rules between keys are the caller's.
    fn assign(&mut self, key: &str, value: &str, origin: Origin) -> Result<(), ConfigError> {
        let bad = |expected: &str| ConfigError::InvalidValue {
            key: key.to_string(),
            origin: origin.clone(),
            value: value.to_string(),
            expected: expected.to_string(),
        };
        let ipv4 = |v: &str| v.trim().parse::<Ipv4Addr>().ok();
        // At most about 31 years: any product of these with a small factor, or their sum with an
        // `Instant`, stays representable.
        let ms = |v: &str, lo: u64| parse_range::<u64>(v, lo, MAX_MS).map(Duration::from_millis);
        match key {
            "transport" => self.transport = value.parse().map_err(|e: String| bad(&e))?,
            "mode" => self.mode = value.parse().map_err(|e: String| bad(&e))?,
            "network.group" => {
                self.network_group =
                    ipv4(value).filter(Ipv4Addr::is_multicast).ok_or_else(|| bad("an IPv4 multicast address"))?
            }
            "network.mask" => {
                self.network_mask = ipv4(value).ok_or_else(|| bad("an IPv4 mask such as 255.255.255.240"))?
            }
            "network.group_mapping" => {
                self.group_mapping = match value.trim().to_ascii_lowercase().as_str() {
                    "v2" => GroupMapping::V2,
                    "v1" => GroupMapping::V1,
                    _ => return Err(bad("one of v2, v1")),
                }
            }
            "network.ttl" => self.network_ttl = parse_range(value, 0, 255).ok_or_else(|| bad("an integer 0..=255"))?,
            "network.interface" => {
                let v = value.trim();
                self.interface = (!v.is_empty()).then(|| v.to_string());
            }
            "network.multicast_loopback" => {
                (self.multicast_loopback, self.multicast_loopback_always) =
                    if value.trim().eq_ignore_ascii_case("always") {
                        (true, true)
                    } else {
                        (parse_bool(value).ok_or_else(|| bad("true, false or always"))?, false)
                    }
            }
            "local.group" => self.local_group = ipv4(value).ok_or_else(|| bad("an IPv4 broadcast address"))?,
            "local.ttl" => self.local_ttl = parse_range(value, 0, 255).ok_or_else(|| bad("an integer 0..=255"))?,
            "ports.registration" => {
                self.registration_port = parse_range(value, 1, 65535).ok_or_else(|| bad("a port 1..=65535"))?
            }
            "ports.data" => self.data_port = parse_range(value, 1, 65535).ok_or_else(|| bad("a port 1..=65535"))?,
            "udp.receive_buffer" => {
                self.receive_buffer = parse_bytes(value)
                    .filter(|v| *v >= 65536)
                    .ok_or_else(|| bad("a size of at least 65536 bytes, e.g. 64MiB"))?
            }
            "udp.max_datagram_size" => {
                self.max_datagram_size = parse_range(value, crate::wire::HEADER_LEN + 1, crate::wire::MAX_DATAGRAM_LEN)
                    .ok_or_else(|| bad("an integer 25..=65507"))?
            }
            "udp.send_mode" => self.send_mode = value.parse().map_err(|e: String| bad(&e))?,
            "udp.frame_size" => {
                self.frame_size = if value.trim().eq_ignore_ascii_case("auto") {
                    None
                } else {
                    Some(
                        parse_range(value, crate::wire::HEADER_LEN + 1, crate::wire::MAX_DATAGRAM_LEN)
                            .ok_or_else(|| bad("auto, or an integer 25..=65507"))?,
                    )
                }
            }
            "udp.send_timeout_ms" => {
                self.send_timeout = ms(value, 1).ok_or_else(|| bad("milliseconds, 1..=1000000000000"))?
            }
            "reassembly.timeout_ms" => {
                self.reassembly.timeout = ms(value, 1).ok_or_else(|| bad("milliseconds, 1..=1000000000000"))?
            }
            "reassembly.max_message_size" => {
                self.reassembly.max_message_len = parse_bytes(value)
                    .filter(|v| *v >= 1 && *v <= u32::MAX as usize)
                    .ok_or_else(|| bad("a size from 1 byte to 4GiB, e.g. 128MiB"))?
            }
            "reassembly.max_partial_messages" => {
                self.reassembly.max_partial_messages =
                    parse_range(value, 1, 1 << 24).ok_or_else(|| bad("an integer 1..=16777216"))?
            }
            "reassembly.max_buffered_bytes" => {
                self.reassembly.max_buffered_bytes = parse_bytes(value)
                    .filter(|v| *v >= 65536)
                    .ok_or_else(|| bad("a size of at least 65536 bytes, e.g. 256MiB"))?
            }
            "registration.refresh_ms" => {
                self.registration_refresh = ms(value, 10).ok_or_else(|| bad("milliseconds, 10..=1000000000000"))?
            }
            "registration.timeout_ms" => {
                self.registration_timeout = ms(value, 20).ok_or_else(|| bad("milliseconds, 20..=1000000000000"))?
            }
            "registration.max_table_bytes" => {
                self.registration_table_bytes = parse_bytes(value)
                    .filter(|v| *v >= 1 << 20)
                    .ok_or_else(|| bad("a size of at least 1MiB, e.g. 64MiB"))?
            }
            "registration.max_message_size" => {
                self.registration_max_message = parse_bytes(value)
                    .filter(|v| *v >= 65536 && *v <= u32::MAX as usize)
                    .ok_or_else(|| bad("a size from 64KiB to 4GiB, e.g. 4MiB"))?
            }
            "registration.max_buffered_bytes" => {
                self.registration_buffered_bytes = parse_bytes(value)
                    .filter(|v| *v >= 65536)
                    .ok_or_else(|| bad("a size of at least 65536 bytes, e.g. 16MiB"))?
            }
            "registration.loopback" => {
                self.registration_loopback = parse_bool(value).ok_or_else(|| bad("true or false"))?
            }
            "subscriber.drop_out_of_order" => {
                self.drop_out_of_order = parse_bool(value).ok_or_else(|| bad("true or false"))?
            }
            "subscriber.queue_capacity" => {
                self.queue_capacity = parse_range(value, 1, 1 << 24).ok_or_else(|| bad("an integer 1..=16777216"))?
            }
            "subscriber.queue_bytes" => {
                self.queue_bytes = parse_bytes(value)
                    .filter(|v| *v >= 1024)
                    .ok_or_else(|| bad("a size of at least 1024 bytes, e.g. 64MiB"))?
            }
            k if k.starts_with("npcap.") => {
                self.npcap.insert(k["npcap.".len()..].to_string(), value.trim().to_string());
            }
            "unit_name" => self.unit_name = Some(value.to_string()),
            "host_name" => self.host_name = Some(value.to_string()),
            _ => {
                return Err(ConfigError::UnknownKey { key: key.to_string(), origin, known: KEYS.join(", ") });
            }
        }
        Ok(())
    }

    /// The bounds of the registration channel's reassembly: its own message size and byte
    /// budget, the data channel's timeout and partial-message count.
    pub fn registration_reassembly(&self) -> ReassemblyConfig {
        ReassemblyConfig {
            max_message_len: self.registration_max_message,
            max_buffered_bytes: self.registration_buffered_bytes,
            ..self.reassembly.clone()
        }
    }

    /// The destination group of both channels in the current mode.
    pub fn destination(&self) -> Ipv4Addr {
        match self.mode {
            Mode::Network => self.network_group,
            Mode::Local => self.local_group,
        }
    }

    /// TTL in the current mode.
    pub fn ttl(&self) -> u32 {
        match self.mode {
            Mode::Network => self.network_ttl,
            Mode::Local => self.local_ttl,
        }
    }
}

/// Where a rule between keys broken by the environment is reported: its last `MW_` variable.
fn env_origin(vars: &[(String, String)]) -> Option<Origin> {
    vars.iter().filter(|(n, _)| n.starts_with(ENV_PREFIX)).last().map(|(n, _)| Origin::Env(n.clone()))
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        toml::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_ecal() {
        let mut c = Config::default();
        assert_eq!(c.mode, Mode::Local);
        assert_eq!((c.destination(), c.ttl()), (Ipv4Addr::new(127, 255, 255, 255), 1));
        c.set("mode", "network").unwrap();
        assert_eq!(c.destination(), Ipv4Addr::new(239, 0, 0, 1));
        assert_eq!((c.registration_port, c.data_port, c.ttl()), (14000, 14002, 3));
        assert_eq!(c.max_datagram_size, 65507);
        assert_eq!(c.reassembly.timeout, Duration::from_secs(5));
        assert_eq!(c.registration_timeout, Duration::from_secs(10));
    }

    #[test]
    fn file_then_env() {
        let mut c = Config::default();
        c.apply_toml(
            "transport = \"auto\"\nmode = \"network\"\n[network]\nttl = 5\ninterface = \"veth0\"\n[udp]\nreceive_buffer = \"8MiB\"\n[reassembly]\nmax_partial_messages = 10\n",
            Origin::Code,
        )
        .unwrap();
        assert_eq!(c.transport, TransportKind::Auto);
        assert_eq!(c.mode, Mode::Network);
        assert_eq!(c.network_ttl, 5);
        assert_eq!(c.interface.as_deref(), Some("veth0"));
        assert_eq!(c.receive_buffer, 8 << 20);
        assert_eq!(c.reassembly.max_partial_messages, 10);
        assert_eq!(c.destination(), Ipv4Addr::new(239, 0, 0, 1));
        c.apply_env([("MW_TRANSPORT".to_string(), "npcap".to_string()), ("PATH".into(), "x".into())]).unwrap();
        assert_eq!(c.transport, TransportKind::Npcap);
        c.apply_env([("MW_NETWORK_MULTICAST_LOOPBACK".to_string(), "false".to_string())]).unwrap();
        assert!(!c.multicast_loopback);
    }

    #[test]
    fn errors_name_key_and_accepted_values() {
        let mut c = Config::default();
        let e = c.apply_env([("MW_TRANSPORT".to_string(), "carrier-pigeon".to_string())]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config key `transport` (environment variable MW_TRANSPORT): invalid value `carrier-pigeon`; expected one of socket, npcap, auto"
        );
        let e = c.set("network.group", "10.0.0.1").unwrap_err();
        assert!(e.to_string().contains("multicast"), "{e}");
        let e = c.set("network.ttl", "300").unwrap_err();
        assert!(e.to_string().contains("0..=255"), "{e}");
        c.set("udp.send_mode", "Frames").unwrap();
        c.set("udp.frame_size", "1400").unwrap();
        assert_eq!((c.send_mode, c.frame_size), (SendMode::Frames, Some(1400)));
        c.set("udp.frame_size", "auto").unwrap();
        assert_eq!(c.frame_size, None);
        assert!(c.set("udp.send_mode", "gso").unwrap_err().to_string().contains("ecal, frames, auto"));
        assert!(c.set("udp.frame_size", "24").unwrap_err().to_string().contains("25..=65507"));
        let e = c.set("udp.max_datagram_size", "70000").unwrap_err();
        assert!(e.to_string().contains("25..=65507"), "{e}");
        let e = c.apply_toml("[network]\ntll = 3\n", Origin::Code).unwrap_err();
        assert!(matches!(e, ConfigError::UnknownKey { ref key, .. } if key == "network.tll"));
        assert!(matches!(c.apply_toml("mode = ", Origin::Code), Err(ConfigError::File { .. })));
    }

    #[test]
    fn rules_between_keys_do_not_depend_on_order_and_a_refusal_changes_nothing() {
        // One file raising both: valid whatever the order of its keys.
        for text in [
            "[registration]\nrefresh_ms = 20000\ntimeout_ms = 30000\n",
            "[registration]\ntimeout_ms = 30000\nrefresh_ms = 20000\n",
        ] {
            let mut c = Config::default();
            c.apply_toml(text, Origin::Code).unwrap();
            assert_eq!(
                (c.registration_refresh, c.registration_timeout),
                (Duration::from_secs(20), Duration::from_secs(30))
            );
        }
        // The environment too, and a file then the environment together (`load`'s order).
        let mut c = Config::default();
        c.apply_env([
            ("MW_REGISTRATION_REFRESH_MS".to_string(), "20000".to_string()),
            ("MW_REGISTRATION_TIMEOUT_MS".to_string(), "30000".to_string()),
        ])
        .unwrap();
        assert_eq!(c.registration_refresh, Duration::from_secs(20));
        let mut c = Config::default();
        c.apply_toml_unchecked("[registration]\nrefresh_ms = 20000\n", Origin::Code).unwrap();
        c.apply_env_unchecked([("MW_REGISTRATION_TIMEOUT_MS".to_string(), "30000".to_string())]).unwrap();
        c.check_rules(&Origin::Code).unwrap();
        // A refused set, file or environment leaves everything as it was.
        let before = Config::default();
        let mut c = before.clone();
        let e = c.set("registration.refresh_ms", "20000").unwrap_err();
        assert!(e.to_string().contains("set both together"), "{e}");
        assert_eq!(c, before);
        assert!(c.apply_toml("mode = \"network\"\n[network]\nttl = 300\n", Origin::Code).is_err());
        assert_eq!(c, before, "the file's valid keys were not kept either");
        assert!(c
            .apply_env([("MW_MODE".to_string(), "network".to_string()), ("MW_NETWORK_TTL".into(), "x".into())])
            .is_err());
        assert_eq!(c, before);
        assert!(c.set_all([("registration.refresh_ms", "20000"), ("registration.timeout_ms", "15000")]).is_err());
        assert_eq!(c, before);
        c.set_all([("registration.refresh_ms", "20000"), ("registration.timeout_ms", "30000")]).unwrap();
        assert_eq!(c.registration_timeout, Duration::from_secs(30));
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("64MiB"), Some(64 << 20));
        assert_eq!(parse_bytes("65536"), Some(65536));
        assert_eq!(parse_bytes("2 G"), Some(2 << 30));
        assert_eq!(parse_bytes("12 parsecs"), None);
        assert_eq!(parse_bytes("99999999999999999999G"), None);
    }
}
