//! The typed publish/subscribe API on top of the pure layers.
//!
//! A [`Node`] is one participant (one eCAL "process"): it opens a transport per channel, sends
//! its registration every refresh period, tracks remote entities, reassembles and dispatches
//! data. [`Publisher`] and [`Subscriber`] are handles created from it.

pub mod codec;
mod delivery;
mod discovery;
pub mod filter;
mod node;
mod publisher;
mod subscriber;
pub mod tap;

pub use codec::{Codec, CodecError, Proto, ProtoType, Raw, Text};
pub use filter::{FilterTable, SeqFilter, Verdict, HELD, JUMP_CONFIRM, MAX_TRACKED_PUBLISHERS, RESYNC_AFTER};
pub use node::{Node, NodeError, NodeOptions, NodeStats, Received, TransportChoice};
pub use publisher::Publisher;
pub use subscriber::Subscriber;
pub use tap::{Tap, TappedSample};
