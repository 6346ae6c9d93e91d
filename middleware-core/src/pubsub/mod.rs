//! The typed publish/subscribe API on top of the pure layers.
//!
//! A [`Node`] is one participant (one eCAL "process"): it opens a transport per channel, sends
//! its registration every refresh period, tracks remote entities, reassembles and dispatches
//! data. [`Publisher`] and [`Subscriber`] are handles created from it.

pub mod codec;
pub mod filter;
mod node;
pub mod tap;

pub use codec::{Codec, CodecError, Proto, ProtoType, Raw, Text};
pub use filter::{FilterTable, SeqFilter, Verdict, MAX_TRACKED_PUBLISHERS};
pub use node::{Node, NodeError, NodeStats, Publisher, Received, Subscriber};
pub use tap::{Tap, TappedSample};
