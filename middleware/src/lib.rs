//! eCAL 6 compatible publish/subscribe over UDP, in one package: depend on this one alone.
//!
//! Processes publish messages on named *topics* and subscribe to them; they find each other by
//! themselves (every process announces its publishers and subscribers once a second), and they
//! speak Eclipse eCAL 6.1's UDP protocol byte for byte, so real eCAL processes and tools (eCAL
//! Monitor, its recorder) are peers like any other.
//!
//! # Quick start
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use middleware::{Config, Text};
//! use std::time::Duration;
//!
//! // Defaults: UDP sockets, local mode (broadcast on the loopback interface: nothing leaves
//! // this host). Ports of their own here, so this example meets no other process.
//! let mut config = Config::default();
//! config.set("ports.registration", "15810")?;
//! config.set("ports.data", "15811")?;
//! let node = middleware::open_node(config)?;
//!
//! let subscriber = node.subscriber::<Text>("chatter")?;
//! let publisher = node.publisher::<Text>("chatter")?;
//! // A publisher sends only once a subscriber has registered (as eCAL's does).
//! assert!(publisher.wait_for_subscriber(Duration::from_secs(5)));
//! publisher.send("hello")?;
//! let message = subscriber.recv_timeout(Duration::from_secs(5)).expect("delivered");
//! assert_eq!(message.value, "hello");
//! assert_eq!(message.publisher_id, publisher.entity_id());
//! # Ok(()) }
//! ```
//!
//! Applications normally take their configuration from a file and the environment
//! (`Config::load`, the `MW_*` variables) and let the `transport` key choose:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use middleware::{Config, Text};
//! let node = middleware::open_node(Config::load(None)?)?; // the transport the config names
//! let publisher = node.publisher::<Text>("chatter")?;
//! publisher.send("hello")?;
//! # Ok(()) }
//! ```
//!
//! # Concepts
//!
//! - **[`Node`]**: one participant (eCAL: what `eCAL::Initialize` sets up in a process). It owns
//!   the transports of the two channels, registration (port 14000) and data (port 14002), and a
//!   thread that sends its registration. [`open_node`] opens one on the configured transport.
//! - **[`Publisher`]** / **[`Subscriber`]**: typed by a [`Codec`]: [`Raw`] (bytes), [`Text`]
//!   (UTF-8), [`Proto`] (a prost message, registered with its protobuf descriptor so tools can
//!   decode it). Each has a 64-bit entity id (eCAL's `topic_id`). A subscriber hands messages
//!   to a callback ([`Subscriber::on_receive`], called on the transport's receive thread; a
//!   panic is caught and counted, receiving goes on) or queues them for
//!   [`Subscriber::recv_timeout`] (bounded in messages and bytes; the oldest is dropped,
//!   counted).
//! - **Transports**: `socket` (UDP sockets), `npcap` (packet capture through libpcap / Npcap,
//!   loaded at run time, below the IP stack: on Windows, below the firewall's per-datagram
//!   inspection), `auto` (capture when it works here, else sockets). All send through sockets
//!   and are wire compatible. [`Node::transport`] says which one a node got and why.
//! - **Modes** (eCAL's `communication_mode`): `local` (broadcast on loopback: this host only)
//!   and `network` (multicast, group `239.0.0.1` by default).
//! - **Configuration**: [`Config`], from defaults, a TOML file, `MW_*` environment variables and
//!   [`Config::set`]; every key and its default is in the README's configuration table.
//! - **Nothing is lost silently**: [`Node::stats`] ([`NodeStats`]: per channel, datagrams
//!   received, malformed input, IPv4 and eCAL reassembly drops, OS drops) and
//!   [`Subscriber::stats`] ([`SubscriberStats`]: delivered, `sequence_gaps` = messages a
//!   publisher sent that never arrived, `duplicates`, `out_of_order`, `queue_overflow` =
//!   dropped from a full queue, `callback_panics`).
//! - **What eCAL's tools see**: every registration field eCAL 6.1 fills, with its meaning
//!   (rates, sizes, clocks, drops, process state: [`Node::set_state`]).
//!
//! # Transports and their errors
//!
//! [`open_node`] opens a [`Node`] on the transport the config's `transport` key selects:
//! `socket` (UDP sockets), `npcap` (packet capture through libpcap / Npcap, loaded at run time;
//! cargo feature `npcap`, on by default) or `auto` (capture when the library, the devices and
//! the permission are there and the capture hears the node's own registration, else sockets).
//! The choice, and why, is a property of the node: [`Node::transport`]. A missing library or
//! permission is an [`OpenError`] that says what to install or grant.
//!
//! Everything else is the core's API, re-exported: [`Config`], [`Node`], [`Publisher`],
//! [`Subscriber`], the codecs [`Raw`], [`Text`], [`Proto`]; [`core`] has the rest (wire format,
//! registration, the `Transport` trait for writing a transport of one's own).

#![warn(missing_docs)]

#[cfg(feature = "cli")]
pub mod cli;

/// The core's modules, for what the names above do not cover (wire format, registration,
/// the `Transport` trait for writing a transport of one's own).
pub use middleware_core as core;
pub use middleware_core::config::{Config, ConfigError, Mode, TransportKind};
pub use middleware_core::pb::DataTypeInformation;
pub use middleware_core::registration::{Identity, ProcessState, RemoteEntity, RemoteProcess, Severity};
pub use middleware_core::stats::{ChannelStats, PublisherStats, SubscriberStats};
pub use middleware_core::transport::TransportStats;
pub use middleware_core::{
    Codec, Node, NodeError, NodeOptions, NodeStats, Proto, ProtoType, Publisher, Raw, Received, Subscriber, Tap,
    TappedSample, Text, TransportChoice,
};

/// The packet-capture transport (diagnostics: `availability`, `decide`, `NpcapFactory::check`).
#[cfg(feature = "npcap")]
pub use transport_udp_npcap as npcap;
#[cfg(feature = "npcap")]
pub use transport_udp_npcap::{CapturedFrame, FrameTap};
/// The socket transport (diagnostics: `interfaces`, `resolve_interface`).
pub use transport_udp_socket as socket;

use middleware_core::transport::TransportFactory;
use std::sync::Arc;

/// Why a node could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// A configuration value is bad (the message names the key and what is accepted).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The transport could not be opened: missing capture library or permission, a socket
    /// that cannot be bound, no route for the group (the message says what to do).
    #[error("opening the {transport} transport: {source}")]
    Transport {
        /// Which transport: `socket` or `npcap (packet capture)`.
        transport: &'static str,
        /// Why.
        #[source]
        source: NodeError,
    },
    /// `transport = npcap` in a program built without the capture transport.
    #[error(
        "transport `npcap` is configured, but this program was built without the capture transport \
         (cargo feature `npcap` of the `middleware` package); use `socket` or `auto`, or rebuild with the feature"
    )]
    NpcapNotBuilt,
}

/// Observers a tool attaches when it opens its node: see [`open_node_with`].
#[derive(Clone, Default)]
pub struct Taps {
    /// Sees every datagram and decoded sample the node receives.
    pub node: Option<Arc<dyn Tap>>,
    /// Sees every captured frame (packet capture transport only).
    #[cfg(feature = "npcap")]
    pub frames: Option<FrameTap>,
}

/// Opens a node on the transport the config selects. `auto` captures when the capture library
/// (loaded at run time) is installed, lists the devices the mode needs and they open;
/// otherwise it falls back to sockets. Either way one log line says what was chosen and why,
/// and [`Node::transport`] tells it.
///
/// # Errors
/// The transport cannot be opened (for `npcap`: the library or the capture permission is
/// missing; the message says what to install or grant), or a bad `npcap.*` option.
pub fn open_node(config: Config) -> Result<Node, OpenError> {
    open_node_with(config, &Taps::default())
}

fn open_socket(config: Config, taps: &Taps, reason: String) -> Result<Node, OpenError> {
    let factory: &dyn TransportFactory = &transport_udp_socket::factory;
    Node::open(config, factory, NodeOptions { tap: taps.node.clone(), transport_reason: reason })
        .map_err(|source| OpenError::Transport { transport: "socket", source })
}

#[cfg(feature = "npcap")]
fn open_npcap(config: &Config, taps: &Taps, reason: String) -> Result<Node, OpenError> {
    let mut factory = transport_udp_npcap::NpcapFactory::new(config)?;
    if let Some(t) = &taps.frames {
        factory = factory.with_frame_tap(Arc::clone(t));
    }
    Node::open(config.clone(), &factory, NodeOptions { tap: taps.node.clone(), transport_reason: reason })
        .map_err(|source| OpenError::Transport { transport: "npcap (packet capture)", source })
}

/// [`open_node`] with observers attached.
///
/// # Errors
/// As [`open_node`].
pub fn open_node_with(config: Config, taps: &Taps) -> Result<Node, OpenError> {
    match config.transport() {
        TransportKind::Socket => open_socket(config, taps, String::new()),
        #[cfg(feature = "npcap")]
        TransportKind::Npcap => open_npcap(&config, taps, String::new()),
        #[cfg(not(feature = "npcap"))]
        TransportKind::Npcap => Err(OpenError::NpcapNotBuilt),
        TransportKind::Auto => open_auto(config, taps),
    }
}

#[cfg(feature = "npcap")]
fn open_auto(config: Config, taps: &Taps) -> Result<Node, OpenError> {
    let d = transport_udp_npcap::decide(config.mode(), &transport_udp_npcap::availability(&config));
    let opened = if d.capture {
        open_npcap(&config, taps, format!("auto: {}", d.reason)).map_err(|e| e.to_string())
    } else {
        Err(d.reason.clone())
    };
    // A capture that opens may still hear nothing (wrong adapter, a library that returns no
    // frames): it must hear the node's own registration, sent at once on the group and port it
    // listens to, before `auto` settles on it.
    let opened = opened.and_then(|node| capture_hears_itself(&node, hearing_window(&config)).map(|()| node));
    match opened {
        Ok(node) => {
            tracing::info!("transport auto: packet capture with {}", d.reason);
            Ok(node)
        }
        Err(why) => {
            tracing::warn!("transport auto: packet capture unavailable ({why}); falling back to sockets");
            open_socket(config, taps, format!("auto fallback: {why}"))
        }
    }
}

/// How long to wait for a new capture node to hear itself (`auto`, `mwctl doctor`): two
/// registration rounds and a half, at least 1 s, and a second less than the transport's own
/// deaf verdict (`transport_udp_npcap::hearing::deaf_after`, which logs an error), so that a
/// fallback is one warning. A capture that works hears the first round within milliseconds.
#[cfg(feature = "npcap")]
pub fn hearing_window(config: &Config) -> std::time::Duration {
    use std::time::Duration;
    let most = transport_udp_npcap::hearing::deaf_after(config.registration_refresh()) - Duration::from_secs(1);
    (config.registration_refresh() * 2 + Duration::from_millis(500)).clamp(Duration::from_secs(1), most)
}

/// Waits until the node's capture has heard one of the node's own registration datagrams
/// (`self_heard` in the registration channel's transport stats), at most `within`. Channels
/// the capture is not meant to hear itself on (multicast loopback off) pass at once.
///
/// # Errors
/// Nothing heard within `within`: why, for the log and [`Node::transport`].
pub fn capture_hears_itself(node: &Node, within: std::time::Duration) -> Result<(), String> {
    let start = std::time::Instant::now();
    loop {
        let t = node.stats().registration.transport;
        match t.details.get("self_heard") {
            None => return Ok(()),
            Some(n) if *n > 0 => return Ok(()),
            Some(_) if start.elapsed() >= within => {
                return Err(format!(
                    "the packet capture ({}) heard nothing in {:.1} s, not even this node's own registration: \
                     it is on a device the traffic does not cross, or the capture library delivers no frames; \
                     set network.interface / npcap.interfaces (see `mwctl doctor`)",
                    t.note,
                    within.as_secs_f64()
                ));
            }
            Some(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    }
}

#[cfg(not(feature = "npcap"))]
fn open_auto(config: Config, taps: &Taps) -> Result<Node, OpenError> {
    open_socket(config, taps, "auto: built without the capture transport (cargo feature `npcap`)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local_config(base: u16) -> Config {
        let mut c = Config::default();
        c.set("ports.registration", &base.to_string()).unwrap();
        c.set("ports.data", &(base + 1).to_string()).unwrap();
        c
    }

    #[test]
    fn each_node_knows_its_own_transport_and_why() {
        let base = 63_000 + 2 * (std::process::id() % 500) as u16;
        let a = open_node(local_config(base)).unwrap();
        assert_eq!(a.transport(), &TransportChoice { name: "socket".into(), reason: String::new() });
        let mut c = local_config(base);
        c.set("transport", "auto").unwrap();
        c.set("npcap.library", "/nonexistent/libpcap-for-this-test.so").unwrap();
        let b = open_node(c).unwrap();
        assert_eq!(b.transport().name, "socket");
        assert!(b.transport().reason.starts_with("auto fallback: "), "{:?}", b.transport());
        assert!(b.transport().reason.contains("/nonexistent/libpcap-for-this-test.so"), "{:?}", b.transport());
        // The first node's choice is its own, not overwritten by the second's.
        assert_eq!(a.transport().reason, "");
        assert_eq!(a.stats().transport, *a.transport());
        assert_eq!(b.stats().transport, *b.transport());
    }

    #[cfg(feature = "npcap")]
    #[test]
    fn npcap_without_the_library_says_what_to_install() {
        let mut c = local_config(64_000 + 2 * (std::process::id() % 500) as u16);
        c.set("transport", "npcap").unwrap();
        c.set("npcap.library", "/nonexistent/libpcap-for-this-test.so").unwrap();
        let e = open_node(c).unwrap_err().to_string();
        assert!(e.starts_with("opening the npcap (packet capture) transport: "), "{e}");
        assert!(e.contains("/nonexistent/libpcap-for-this-test.so"), "{e}");
    }
}
