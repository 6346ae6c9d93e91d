//! Core of a publish/subscribe middleware that speaks Eclipse eCAL 6.1's UDP protocol byte for
//! byte, with pluggable transports.
//!
//! No sockets and no packet capture live here. The pure layers take time as a parameter and are
//! tested in-process:
//!
//! * [`wire`]: the ecaludp v5 datagram header and the sample frame (name + protobuf);
//! * [`pb`]: the `eCAL.pb` protobuf messages (prost derives written from the wire spec);
//! * [`fragment`]: message -> datagrams and bounded reassembly;
//! * [`topic_group`]: topic -> multicast group;
//! * [`registration`]: registration samples and the remote entity table;
//! * [`config`]: file + environment configuration, including the transport flag;
//! * [`transport`]: the [`Transport`] trait transports implement.
//!
//! [`pubsub`] drives them with threads: [`Node`], [`Publisher`], [`Subscriber`].

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

pub use config::{Config, Mode, TransportKind};
pub use pubsub::{
    Codec, Node, NodeError, NodeOptions, NodeStats, Proto, ProtoType, Publisher, Raw, Received, Subscriber, Tap,
    TappedSample, Text, TransportChoice,
};
pub use transport::{DatagramSink, Transport, TransportError, TransportFactory};
