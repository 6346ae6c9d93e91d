//! Read-only hooks into a node's receive path, for tools that watch traffic (monitors,
//! recorders) rather than subscribe to it. A node without a tap pays nothing for this.

use crate::pb::Sample;
use crate::stats::ChannelCounters;
use crate::transport::Channel;
use std::net::SocketAddr;

/// Calls user code of a tap, containing a panic: counted in the channel's `tap_panics`, logged
/// at error level the first time and every 1000th (the panic hook prints its own message), and
/// the caller goes on with the datagram or sample.
pub(crate) fn guarded(counters: &ChannelCounters, what: &'static str, f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        counters.tap_panics.inc();
        let n = counters.tap_panics.get();
        if n == 1 || n % 1000 == 0 {
            tracing::error!(tap = what, panics = n, "a tap panicked (caught; receiving goes on)");
        } else {
            tracing::debug!(tap = what, panics = n, "a tap panicked (caught)");
        }
    }
}

/// One data sample as a node decoded it, whether or not a local subscriber wants the topic.
#[derive(Debug, Clone, Copy)]
pub struct TappedSample<'a> {
    /// Topic name (the sample name).
    pub topic: &'a str,
    /// Entity id of the publisher (eCAL `topic_id`).
    pub publisher_id: u64,
    /// Host name of the publisher.
    pub host_name: &'a str,
    /// The publisher's send counter.
    pub clock: i64,
    /// Send time, µs since the Unix epoch of the sender's clock.
    pub send_time_us: i64,
    /// The message payload as published.
    pub payload: &'a [u8],
    /// Length of the whole message (name prefix + protobuf) on the wire.
    pub message_len: usize,
    /// Source address and port of the datagram(s).
    pub source: SocketAddr,
}

/// Observer of a node's receive path. Called on the receive threads: keep it short. A panic is
/// caught and counted (`tap_panics` of the channel's stats); receiving goes on.
pub trait Tap: Send + Sync {
    /// Every datagram a transport delivered, before reassembly.
    fn datagram(&self, _channel: Channel, _source: SocketAddr, _bytes: &[u8]) {}
    /// Every registration sample that decoded, accepted by the node or not (own process too).
    fn registration(&self, _sample: &Sample, _source: SocketAddr) {}
    /// Every data sample that decoded.
    fn data_sample(&self, _sample: &TappedSample<'_>) {}
}
