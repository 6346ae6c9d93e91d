//! From a transport's receive thread to the application: the per-channel sink (eCAL
//! reassembly), decoding of data messages, the per-publisher order filter and the fan-out to
//! subscribers. The decoding and fan-out take `now` and run without threads in the tests below.
//!
//! Locks here are short and never held across a call out: the reassembler's lock is released
//! before the message is handled (the reassembled message is owned, or borrows the datagram),
//! the subscriber map is copied out of its lock, each filter is locked for one check, and the
//! callback runs with nothing locked (see `subscriber.rs`).

use super::filter::Verdict;
use super::node::{lock, Received, Shared};
use super::subscriber::SubShared;
use super::tap::{guarded, TappedSample};
use crate::fragment::{Outcome, Reassembler, ReassemblyStats, SplitMessage};
use crate::pb::{CmdType, Sample};
use crate::stats::ChannelCounters;
use crate::transport::{Channel, DatagramLease, DatagramSink, TICK};
use crate::wire::{coalesced_segment_len, SampleFrame};
use prost::Message as _;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The sink a node gives each of its transports.
pub(crate) struct ChannelRx {
    shared: Arc<Shared>,
    channel: Channel,
    reassembler: Mutex<Reassembler>,
    /// Last registration-table expiry (registration channel).
    last_expire: Mutex<Instant>,
}

impl ChannelRx {
    pub(crate) fn new(shared: Arc<Shared>, channel: Channel) -> Self {
        let config = match channel {
            Channel::Data => shared.config.reassembly.clone(),
            Channel::Registration => shared.config.registration_reassembly(),
        };
        // Data messages are reassembled with their payload in a buffer of its own, which the
        // subscriber is then handed: one copy per payload byte.
        let reassembler = Mutex::new(match channel {
            Channel::Data => Reassembler::with_splitter(config, data_payload_range),
            Channel::Registration => Reassembler::new(config),
        });
        Self { shared, channel, reassembler, last_expire: Mutex::new(Instant::now()) }
    }

    fn counters(&self) -> &ChannelCounters {
        match self.channel {
            Channel::Registration => &self.shared.reg_counters,
            Channel::Data => &self.shared.data_counters,
        }
    }

    pub(crate) fn reassembly_stats(&self) -> ReassemblyStats {
        lock(&self.reassembler).stats()
    }
}

impl ChannelRx {
    /// What reassembly produced, handed on (no lock held).
    fn handle(&self, outcome: Outcome<'_>, source: SocketAddr, now: Instant) {
        let sh = &self.shared;
        match (outcome, self.channel) {
            (Outcome::Message(m), Channel::Registration) => sh.on_registration(&m, source, now),
            (Outcome::Message(m), Channel::Data) => on_data(sh, Message::Whole(m), source),
            (Outcome::Split(m), Channel::Data) => on_data(sh, Message::Split(m), source),
            (Outcome::Split(m), Channel::Registration) => sh.on_registration(&m.joined(), source, now),
            (Outcome::Pending | Outcome::Dropped, _) => {}
        }
    }

    /// `buffer`: one eCAL datagram, or (`segment`) datagrams of that size back to back. Pieces
    /// of one buffer share one lock, let go to hand on a message and before the tap (which
    /// records each piece as the datagram it is on the wire after the cut). Without a tap, runs
    /// of in-order fragments of one message are appended with one lookup.
    fn pieces(&self, buffer: &[u8], segment: Option<usize>, source: SocketAddr, now: Instant) {
        let sh = &self.shared;
        let mut reassembler = None;
        let size = segment.unwrap_or(buffer.len()).max(1);
        let runs = segment.is_some() && sh.tap.is_none();
        let mut rest = buffer;
        loop {
            if runs {
                let taken =
                    reassembler.get_or_insert_with(|| lock(&self.reassembler)).append_run(now, source, rest, size);
                rest = &rest[taken..];
                if rest.is_empty() {
                    break;
                }
            }
            let (piece, after) = rest.split_at(size.min(rest.len()));
            rest = after;
            if let Some(tap) = &sh.tap {
                drop(reassembler.take());
                guarded(self.counters(), "datagram", || tap.datagram(self.channel, source, piece));
            }
            // The message borrows the datagram or is owned: nothing of the reassembler's.
            let outcome = reassembler.get_or_insert_with(|| lock(&self.reassembler)).on_datagram(now, source, piece);
            if !matches!(outcome, Outcome::Pending | Outcome::Dropped) {
                drop(reassembler.take());
                self.handle(outcome, source, now);
            }
            if rest.is_empty() {
                break;
            }
        }
    }
}

impl DatagramSink for ChannelRx {
    fn datagram(&self, datagram: &[u8], source: SocketAddr, now: Instant) {
        if self.shared.closed() {
            return;
        }
        // Usually one eCAL datagram; on the data channel, several of one size back to back where
        // a capture saw a sender's segmentation offload buffer uncut (`coalesced_segment_len`).
        let segment = match self.channel {
            Channel::Data => coalesced_segment_len(datagram),
            Channel::Registration => None,
        };
        if segment.is_some() {
            self.counters().coalesced.inc();
        }
        self.pieces(datagram, segment, source, now);
    }

    fn datagrams(&self, buffer: &[u8], segment: usize, source: SocketAddr, now: Instant) {
        if !self.shared.closed() {
            self.pieces(buffer, Some(segment), source, now);
        }
    }

    fn begin_datagram(&self, first: &[u8], len: usize, source: SocketAddr, now: Instant) -> Option<DatagramLease> {
        // A tap records every datagram as it came: the buffered way.
        if self.shared.closed() || self.shared.tap.is_some() {
            return None;
        }
        lock(&self.reassembler).begin_lease(now, source, first, len)
    }

    fn finish_datagram(&self, lease: DatagramLease, now: Instant) {
        if self.shared.closed() {
            return;
        }
        let source = lease.sender();
        let outcome = lock(&self.reassembler).finish_lease(now, lease);
        self.handle(outcome, source, now);
    }

    fn abort_datagram(&self, lease: DatagramLease, out: Option<&mut Vec<u8>>) -> bool {
        lock(&self.reassembler).abort_lease(lease, out)
    }

    fn tick(&self, now: Instant) {
        lock(&self.reassembler).expire(now);
        if self.channel == Channel::Registration {
            let due = {
                let mut last = lock(&self.last_expire);
                let due = now.saturating_duration_since(*last) >= TICK;
                if due {
                    *last = now;
                }
                due
            };
            if due {
                self.shared.expire_remote(now);
            }
        }
    }
}

/// Why a data message was dropped before any subscriber saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataDrop {
    BadFrame,
    BadProtobuf,
    WrongCmd,
    BadTopicId,
}

/// Payloads of at least this many bytes are reassembled into a buffer of their own.
const SPLIT_MIN_PAYLOAD: usize = 4096;

/// The data channel's [`crate::fragment::Splitter`]: a data message's payload, found in its
/// first fragment.
fn data_payload_range(first: &[u8]) -> Option<std::ops::Range<usize>> {
    crate::pb::locate_payload(first).map(|s| s.payload_range()).filter(|r| r.len() >= SPLIT_MIN_PAYLOAD)
}

/// A data message as reassembly hands it over.
pub(crate) enum Message<'a> {
    /// In one buffer: borrowed (one datagram) or owned (reassembled).
    Whole(Cow<'a, [u8]>),
    /// Reassembled with the payload in a buffer of its own.
    Split(SplitMessage),
}

impl Message<'_> {
    /// The part holding the sample name prefix.
    fn front(&self) -> &[u8] {
        match self {
            Self::Whole(m) => m,
            Self::Split(m) => &m.head,
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Whole(m) => m.len(),
            Self::Split(m) => m.head.len() + m.payload.len() + m.tail.len(),
        }
    }
}

/// A message's payload: a slice of the reassembled message, or a buffer of its own.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Payload {
    Shared(bytes::Bytes),
    Owned(Vec<u8>),
}

impl Payload {
    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Shared(b) => b,
            Self::Owned(v) => v,
        }
    }

    /// The payload as the subscriber's `Vec`: an owned one is moved, a slice copied (or moved
    /// to the front of its buffer, where it is the buffer's only user).
    fn into_vec(self) -> Vec<u8> {
        match self {
            Self::Shared(b) => Vec::from(b),
            Self::Owned(v) => v,
        }
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

/// A decoded data sample.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DataSample {
    pub publisher_id: u64,
    pub host_name: String,
    pub clock: i64,
    pub time_us: i64,
    pub payload: Payload,
}

/// The topic name of a data message (its frame) and where its protobuf body starts, or why it
/// is malformed. Checked once per message; [`decode_data`] takes the offset.
pub(crate) fn data_frame(msg: &[u8]) -> Result<(&str, usize), DataDrop> {
    let frame = SampleFrame::new_checked(msg).map_err(|_| DataDrop::BadFrame)?;
    Ok((frame.name(), msg.len() - frame.body().len()))
}

/// Decodes the `Sample` of a data message of `topic` whose body starts at `body_start` (from
/// [`data_frame`]). A reassembled (owned) message is decoded in place: the payload becomes a
/// slice of its buffer, no second allocation.
pub(crate) fn decode_data(msg: Cow<'_, [u8]>, body_start: usize, topic: &str) -> Result<DataSample, DataDrop> {
    if body_start > msg.len() {
        return Err(DataDrop::BadFrame);
    }
    let body = match msg {
        Cow::Owned(v) => bytes::Bytes::from(v).slice(body_start..),
        Cow::Borrowed(b) => bytes::Bytes::copy_from_slice(&b[body_start..]),
    };
    let sample = Sample::decode(body).map_err(|_| DataDrop::BadProtobuf)?;
    checked(sample, topic, None)
}

/// The data sample of a decoded `Sample`, checked as eCAL checks it; `payload` replaces the
/// content's (a split message's payload, decoded apart).
fn checked(sample: Sample, topic: &str, payload: Option<Vec<u8>>) -> Result<DataSample, DataDrop> {
    let t = sample.topic.unwrap_or_default();
    if sample.cmd_type != CmdType::SetSample as i32 || t.topic_name != topic {
        return Err(DataDrop::WrongCmd);
    }
    let publisher_id = t.topic_id.parse::<u64>().map_err(|_| DataDrop::BadTopicId)?;
    let c = sample.content.unwrap_or_default();
    let payload = payload.map_or(Payload::Shared(c.payload), Payload::Owned);
    Ok(DataSample { publisher_id, host_name: t.host_name, clock: c.clock, time_us: c.time, payload })
}

/// Decodes a data message reassembled with its payload apart ([`data_payload_range`]): the rest
/// is decoded as prost decodes the whole message, and the payload buffer becomes the sample's
/// without a copy. A message whose parts are not what the split assumed (a second payload or
/// content field: hostile or odd input) is joined and decoded whole, as before.
pub(crate) fn decode_split(m: SplitMessage, topic: &str) -> Result<DataSample, DataDrop> {
    let span = crate::pb::locate_payload(&m.head).filter(|s| s.payload.0 == m.head.len());
    let decoded = span.and_then(|span| crate::pb::decode_without_payload(&m.head, &span, &m.tail));
    match decoded {
        Some(Ok(sample)) => checked(sample, topic, Some(m.payload)),
        Some(Err(_)) => Err(DataDrop::BadProtobuf),
        None => {
            let whole = m.joined();
            let (_, body_start) = data_frame(&whole)?;
            decode_data(Cow::Owned(whole), body_start, topic)
        }
    }
}

/// Runs each subscriber's order filter and hands the message to those that accept it. The
/// last one takes the payload buffer itself (moved, not copied).
pub(crate) fn fan_out(subs: &[Arc<SubShared>], sample: DataSample, drop_out_of_order: bool) {
    let mut payload = Some(sample.payload);
    let last = subs.len().saturating_sub(1);
    let recv_us = super::node::now_us();
    for (i, s) in subs.iter().enumerate() {
        let verdict = lock(&s.filters).check(sample.publisher_id, sample.clock, drop_out_of_order);
        match verdict {
            Verdict::Duplicate => {
                s.duplicates.inc();
                continue;
            }
            Verdict::OutOfOrder => {
                s.out_of_order.inc();
                continue;
            }
            Verdict::Accept { gap } => {
                if gap > 0 {
                    s.sequence_gaps.add(gap);
                    tracing::debug!(topic = %s.topic, publisher_id = sample.publisher_id, gap, "sequence gap");
                }
            }
            Verdict::Followed => {}
            Verdict::Held => {
                s.clock_jumps_held.inc();
                tracing::debug!(topic = %s.topic, publisher_id = sample.publisher_id, clock = sample.clock,
                    "clock jump held until the publisher's stream confirms it");
            }
            Verdict::Resync => {
                s.clock_resyncs.inc();
                // Forgeries can cause these at will: the first and every 1000th at warning level.
                let n = s.clock_resyncs.get();
                if n == 1 || n % 1000 == 0 {
                    tracing::warn!(topic = %s.topic, publisher_id = sample.publisher_id, clock = sample.clock,
                        resyncs = n, "order filter follows a publisher's stream it had shut out after a run of \
                         rejected samples (a forged or replayed clock had raised its highest clock)");
                } else {
                    tracing::debug!(topic = %s.topic, publisher_id = sample.publisher_id, clock = sample.clock,
                        resyncs = n, "order filter follows a publisher's stream it had shut out");
                }
            }
        }
        let value: Vec<u8> = if i == last {
            payload.take().map(Payload::into_vec).unwrap_or_default()
        } else {
            payload.as_ref().map(|p| p.to_vec()).unwrap_or_default()
        };
        s.offer(
            Received { value, publisher_id: sample.publisher_id, clock: sample.clock, send_time_us: sample.time_us },
            recv_us,
        );
    }
}

fn on_data(sh: &Shared, msg: Message<'_>, source: SocketAddr) {
    let c = &sh.data_counters;
    let (subs, body_start, unmatched_name) = {
        let (topic, body_start) = match data_frame(msg.front()) {
            Ok(t) => t,
            Err(_) => {
                c.bad_frame.inc();
                tracing::debug!(len = msg.len(), "malformed data message frame");
                return;
            }
        };
        let map = sh.subscribers.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        match map.get(topic) {
            Some(v) if !v.is_empty() => (v.clone(), body_start, None),
            // Only a tap wants it: the name is kept (the message itself is consumed below).
            _ if sh.tap.is_some() => (Vec::new(), body_start, Some(topic.to_string())),
            _ => {
                c.unmatched_topic.inc();
                return;
            }
        }
    };
    let message_len = msg.len();
    // Borrowed from the subscriber when there is one: no allocation per message.
    let topic: &str = match (subs.first(), &unmatched_name) {
        (Some(s), _) => &s.topic,
        (None, Some(n)) => n,
        (None, None) => return,
    };
    let decoded = match msg {
        Message::Whole(m) => decode_data(m, body_start, topic),
        Message::Split(m) => decode_split(m, topic),
    };
    let sample = match decoded {
        Ok(s) => s,
        Err(DataDrop::BadFrame) => return c.bad_frame.inc(),
        Err(DataDrop::BadProtobuf) => {
            c.bad_protobuf.inc();
            tracing::debug!(%topic, "undecodable data sample");
            return;
        }
        Err(DataDrop::WrongCmd) => return c.wrong_cmd.inc(),
        Err(DataDrop::BadTopicId) => return c.bad_topic_id.inc(),
    };
    if let Some(tap) = &sh.tap {
        guarded(c, "data_sample", || {
            tap.data_sample(&TappedSample {
                topic,
                publisher_id: sample.publisher_id,
                host_name: &sample.host_name,
                clock: sample.clock,
                send_time_us: sample.time_us,
                payload: &sample.payload,
                message_len,
                source,
            })
        });
    }
    if subs.is_empty() {
        c.unmatched_topic.inc();
        return;
    }
    fan_out(&subs, sample, sh.config.drop_out_of_order);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{encode_data_message, DataHeader, Topic};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn message(topic: &str, publisher: u64, clock: i64, payload: &[u8]) -> Vec<u8> {
        let header =
            Topic { topic_name: topic.into(), topic_id: publisher.to_string(), ..Default::default() }.encode_to_vec();
        let h = DataHeader { topic_name: topic, topic_header: &header, clock, time_us: 5, hash: 0 };
        let mut out = Vec::new();
        encode_data_message(&mut out, &h, payload.len(), |o| o.extend_from_slice(payload));
        out
    }

    fn sub(capacity: usize, bytes: usize) -> Arc<SubShared> {
        Arc::new(SubShared::new(1, "t", Default::default(), capacity, bytes))
    }

    #[test]
    fn decoding_rejects_what_ecal_rejects_and_keeps_the_payload() {
        let m = message("t", 42, 7, b"abc");
        let (name, at) = data_frame(&m).unwrap();
        assert_eq!((name, at), ("t", 4), "2 length bytes, `t`, NUL");
        let s = decode_data(Cow::Owned(m.clone()), at, "t").unwrap();
        assert_eq!((s.publisher_id, s.clock, s.time_us, &s.payload[..]), (42, 7, 5, &b"abc"[..]));
        assert_eq!(decode_data(Cow::Borrowed(&m), at, "other"), Err(DataDrop::WrongCmd));
        assert_eq!(data_frame(&m[..1]), Err(DataDrop::BadFrame));
        assert_eq!(decode_data(Cow::Borrowed(&m[..3]), at, "t"), Err(DataDrop::BadFrame));
        let mut bad_id = message("t", 1, 1, b"");
        let pos = bad_id.windows(1).rposition(|w| w == b"1").unwrap();
        bad_id[pos] = b'x';
        assert_eq!(decode_data(Cow::Borrowed(&bad_id), at, "t"), Err(DataDrop::BadTopicId));
        let mut truncated = m.clone();
        truncated.truncate(m.len() - 4);
        assert_eq!(decode_data(Cow::Borrowed(&truncated), at, "t"), Err(DataDrop::BadProtobuf));
    }

    #[test]
    fn fan_out_filters_per_subscriber_and_bounds_queues_in_messages_and_bytes() {
        let (a, b) = (sub(1024, 4096), sub(2, 1 << 20));
        let subs = vec![Arc::clone(&a), Arc::clone(&b)];
        let sample = |clock: i64, len: usize| DataSample {
            publisher_id: 9,
            host_name: String::new(),
            clock,
            time_us: 0,
            payload: Payload::Shared(bytes::Bytes::from(vec![clock as u8; len])),
        };
        fan_out(&subs, sample(1, 1000), true);
        fan_out(&subs, sample(1, 1000), true); // duplicate
        fan_out(&subs, sample(3, 1000), true); // gap of 1
        fan_out(&subs, sample(2, 1000), true); // out of order
        fan_out(&subs, sample(4, 1000), true);
        for s in [&a, &b] {
            let st = s.stats();
            assert_eq!((st.delivered, st.duplicates, st.out_of_order, st.sequence_gaps), (3, 1, 1, 1));
        }
        // a: 4096 bytes hold three 1000-byte messages (+64 each); b: two messages at most.
        assert_eq!(a.queued(), (3, 3 * 1064));
        assert_eq!(a.stats().queue_overflow, 0);
        assert_eq!(b.queued(), (2, 2 * 1064));
        assert_eq!(b.stats().queue_overflow, 1);
        // Bytes bound: a 3000-byte message pushes out the oldest ones until it fits.
        fan_out(&[Arc::clone(&a)], sample(5, 3000), true);
        assert_eq!(a.queued(), (1, 3064));
        assert_eq!(a.stats().queue_overflow, 3);
        // A message larger than the whole bound still queues, alone.
        fan_out(&[Arc::clone(&a)], sample(6, 10_000), true);
        assert_eq!(a.queued(), (1, 10_064));
        // Empty messages are bounded in bytes too (64 bytes of bookkeeping each).
        let c = sub(1 << 20, 64 * 100);
        for k in 0..1000 {
            fan_out(&[Arc::clone(&c)], sample(k + 1, 0), true);
        }
        assert_eq!(c.queued(), (100, 6400));
        assert_eq!(c.stats().queue_overflow, 900);
    }

    #[test]
    fn a_panicking_subscriber_does_not_stop_the_next_one() {
        let (a, b) = (sub(16, 1 << 20), sub(16, 1 << 20));
        let got = Arc::new(AtomicUsize::new(0));
        a.set_callback(Arc::new(|_| panic!("callback A panics")));
        let g = Arc::clone(&got);
        b.set_callback(Arc::new(move |_| {
            g.fetch_add(1, Ordering::SeqCst);
        }));
        for k in 1..=10 {
            let s = DataSample {
                publisher_id: 1,
                host_name: String::new(),
                clock: k,
                time_us: 0,
                payload: Payload::Owned(vec![1u8]),
            };
            fan_out(&[Arc::clone(&a), Arc::clone(&b)], s, true);
        }
        assert_eq!(got.load(Ordering::SeqCst), 10);
        assert_eq!(a.stats().callback_panics, 10);
        assert_eq!(b.stats().callback_panics, 0);
    }
}
