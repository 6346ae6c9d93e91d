//! Core of a publish/subscribe middleware that speaks Eclipse eCAL 6.1's UDP protocol byte for
//! byte, with pluggable transports.
//!
//! Applications depend on the `middleware` package, which re-exports this API and opens a
//! [`Node`] on the transport its configuration names. This crate is what that package, the
//! transports and tools are built from: the wire format, fragmentation and bounded
//! reassembly, registration, the typed [`Publisher`] / [`Subscriber`] API, configuration, and
//! the [`Transport`] trait. No sockets and no packet capture live here.
//!
//! # Quick start, in-process
//!
//! A node needs a [`TransportFactory`]. With the `testing` feature, `testing::LoopbackBus` is
//! one that moves datagrams between nodes of the same process, so the whole stack (framing,
//! registration, matching, delivery) runs without the network:
//!
//! ```
//! # #[cfg(feature = "testing")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use middleware_core::testing::LoopbackBus;
//! use middleware_core::{Config, Node, Raw};
//! use std::time::Duration;
//!
//! let bus = LoopbackBus::new();
//! let talker = Node::new(Config::default(), &bus)?;
//! let listener = Node::new(Config::default(), &bus)?;
//!
//! let subscriber = listener.subscriber::<Raw>("camera/front")?;
//! let publisher = talker.publisher::<Raw>("camera/front")?;
//! // Publishers learn of subscribers through registration, as in eCAL; until then `send`
//! // sends nothing and returns `Ok(false)`.
//! assert!(publisher.wait_for_subscriber(Duration::from_secs(5)));
//!
//! let frame = vec![7u8; 200_000]; // cut into eCAL fragments and reassembled
//! assert!(publisher.send(&frame)?);
//! let received = subscriber.recv_timeout(Duration::from_secs(5)).expect("delivered");
//! assert_eq!(received.value, frame);
//! assert_eq!(received.clock, 1); // the publisher's message counter
//! assert_eq!(subscriber.stats().delivered, 1);
//! assert_eq!(listener.stats().data.reassembly.reassembled, 1);
//! # Ok(()) }
//! # #[cfg(not(feature = "testing"))]
//! # fn main() {}
//! ```
//!
//! # Layers
//!
//! The pure layers take time as a parameter and are tested in-process:
//!
//! * [`wire`]: the ecaludp datagram header (24 bytes: magic `ECAL`, type, message id, `num`,
//!   `len`) and the sample frame (name + protobuf);
//! * [`pb`]: the `eCAL.pb` protobuf messages of eCAL 6.1.1 (registration and data samples);
//! * [`fragment`]: message -> datagrams, and reassembly bounded in time, partial messages and
//!   bytes;
//! * [`topic_group`]: topic name -> multicast group (eCAL's v1 and v2 hashes);
//! * [`registration`]: the samples a process sends about itself and its entities, and the
//!   bounded table of what it heard from others;
//! * [`config`]: defaults, TOML file, `MW_*` environment variables and code, with one
//!   validating parser and errors that name the key;
//! * [`transport`]: the [`Transport`] trait and the [`DatagramSink`] it pushes to;
//! * [`stats`]: the counters of everything that can be dropped.
//!
//! [`pubsub`] drives them with threads: [`Node`], [`Publisher`], [`Subscriber`], [`Tap`].
//!
//! # eCAL's terms
//!
//! | eCAL 6.1 | here |
//! |---|---|
//! | `eCAL::Initialize` / process | [`Node`] (one per process is usual; several work) |
//! | `CPublisher`, `CSubscriber` | [`Publisher`], [`Subscriber`], typed by a [`Codec`] |
//! | `topic_id` (entity id) | [`Publisher::entity_id`], [`Received::publisher_id`] |
//! | `SDataTypeInformation` | [`pb::DataTypeInformation`], announced by [`Codec::datatype`] |
//! | `communication_mode` local / network | [`Mode::Local`] / [`Mode::Network`] |
//! | registration layer (port 14000), UDP multicast data layer (port 14002) | [`transport::Channel`] |
//! | `CPublisher::Send` without subscribers | sends nothing, clock advances, `Ok(false)` |
//! | receive callback | [`Subscriber::on_receive`]; or the bounded queue of [`Subscriber::recv_timeout`] |
//! | eCAL Monitor's view | [`Node::remote_entities`], [`Node::remote_processes`] |
//!
//! Not implemented: eCAL's shared-memory and TCP layers, services, its logging provider.
//!
//! # Threads
//!
//! A node runs one thread that sends its registration every `registration.refresh_ms`. Each
//! transport receives on threads of its own and pushes datagrams to the node's
//! [`DatagramSink`]; decoding, reassembly and delivery (subscriber callbacks included) run on
//! that receive thread. No lock is held while a transport calls the core or the core calls a
//! user callback; a callback's panic is caught, counted (`callback_panics`) and logged, and
//! receiving goes on.
//!
//! # Writing a transport
//!
//! A transport moves whole UDP payloads for one [`transport::Endpoint`] (a channel, its group,
//! port, TTL, interface): [`Transport::send`] sends one datagram given as header and body, and
//! whatever it receives goes to the sink it was opened with, where it lies, plus a
//! [`DatagramSink::tick`] at least every [`transport::TICK`]. [`transport::SinkSlot`] and
//! [`transport::ReceiveThread`] give the closing and panic rules for free. Fragmentation,
//! decoding and filtering happen above, once, for every transport.
//!
//! ```
//! use middleware_core::transport::{Endpoint, Transport, TransportError, TransportStats};
//! use std::net::Ipv4Addr;
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! /// Sends nowhere and receives nothing, but counts: the smallest valid transport.
//! #[derive(Debug, Default)]
//! struct Counting(AtomicU64);
//!
//! impl Transport for Counting {
//!     fn name(&self) -> &'static str {
//!         "counting"
//!     }
//!     fn send(&self, header: &[u8], body: &[u8]) -> Result<(), TransportError> {
//!         self.0.fetch_add((header.len() + body.len()) as u64, Ordering::Relaxed);
//!         Ok(())
//!     }
//!     fn join(&self, _group: Ipv4Addr) -> Result<(), TransportError> {
//!         Ok(())
//!     }
//!     fn stats(&self) -> TransportStats {
//!         let mut s = TransportStats::default();
//!         s.sent_bytes = self.0.load(Ordering::Relaxed);
//!         s
//!     }
//!     fn close(&self) {}
//! }
//!
//! let t = Counting::default();
//! t.send(&[0; 24], b"payload").unwrap();
//! assert_eq!(t.stats().sent_bytes, 31);
//! ```
//!
//! A closure `Fn(&Endpoint, Arc<dyn DatagramSink>) -> Result<Box<dyn Transport>, _>` is a
//! [`TransportFactory`].
//!
//! # Features
//!
//! * `testing`: the `testing` module, in-process transports (`testing::LoopbackBus`) with
//!   deterministic loss and duplication, for tests of code built on this crate.

#![warn(missing_docs)]

pub mod bounded;
pub mod config;
pub mod fragment;
#[doc(hidden)]
pub mod fuzzing;
pub mod pb;
pub mod pubsub;
pub mod registration;
pub mod stats;
pub mod topic_group;
pub mod transport;
pub mod wire;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use config::{Config, Mode, SendMode, TransportKind};
pub use pubsub::{
    Codec, Node, NodeError, NodeOptions, NodeStats, Proto, ProtoType, Publisher, Raw, Received, Subscriber, Tap,
    TappedSample, Text, TransportChoice,
};
pub use transport::{DatagramLease, DatagramSink, Transport, TransportError, TransportFactory};
