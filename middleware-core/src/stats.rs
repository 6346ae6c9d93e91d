//! Counters for everything that can be dropped. Logs explain, counters prove.

use crate::fragment::ReassemblyStats;
use crate::transport::TransportStats;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Receive-path counters of one channel, above the transport.
#[derive(Debug, Default)]
pub(crate) struct ChannelCounters {
    pub bad_frame: Counter,
    pub bad_protobuf: Counter,
    pub bad_topic_id: Counter,
    pub unmatched_topic: Counter,
    pub wrong_cmd: Counter,
    pub rejected_registration: Counter,
    pub registration_table_full: Counter,
    pub registration_over_budget: Counter,
    pub registration_unchanged: Counter,
    pub coalesced: Counter,
    pub tap_panics: Counter,
}

/// Snapshot of one channel's receive path.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ChannelStats {
    /// What the transport moved and dropped below the eCAL layer.
    pub transport: TransportStats,
    /// eCAL fragment reassembly: completed, expired, evicted and malformed messages.
    pub reassembly: ReassemblyStats,
    /// Messages whose name prefix was malformed (SPEC §4).
    pub bad_frame: u64,
    /// Messages whose protobuf did not decode.
    pub bad_protobuf: u64,
    /// Samples whose `topic_id` was not a decimal u64 (eCAL drops those too).
    pub bad_topic_id: u64,
    /// Data for topics nobody here subscribes (normal: groups and ports are shared).
    pub unmatched_topic: u64,
    /// Samples with an unexpected `cmd_type` or a topic name differing from the frame name.
    pub wrong_cmd: u64,
    /// Registrations rejected by the acceptance rule (foreign host in local mode, own process
    /// without loopback).
    pub rejected_registration: u64,
    /// New remote entities or processes ignored because the table is at its bound.
    pub registration_table_full: u64,
    /// New or grown remote entries ignored because the table is at its byte budget
    /// (`registration.max_table_bytes`: a flood of made-up entities with large descriptors).
    pub registration_over_budget: u64,
    /// Registration samples identical to the last one of their entity or process, which
    /// refreshed it without being decoded (not a loss: eCAL resends unchanged samples).
    pub registration_unchanged: u64,
    /// UDP payloads that held several eCAL datagrams back to back, each handled as its own (a
    /// capture seeing a `udp.send_mode = frames` sender's segmentation offload buffer before the
    /// device cut it; not a loss).
    pub coalesced_datagrams: u64,
    /// Calls of the node's `Tap` (user code: `mwctl record`, monitors) on this channel that
    /// panicked: caught, counted, and receiving went on (the datagram or sample was still
    /// handled).
    pub tap_panics: u64,
}

impl ChannelStats {
    /// Messages of this channel lost before they could be used, all causes summed: drops the OS
    /// or capture library reported, datagrams truncated, partial messages never completed,
    /// malformed frames and protobuf, and new entities refused by the full registration table.
    /// On the registration channel a loss delays discovery by a refresh period (every sample is
    /// resent); 0 on a healthy network.
    pub fn losses(&self) -> u64 {
        [
            self.transport.os_dropped,
            self.transport.truncated,
            self.reassembly.lost_messages(),
            self.bad_frame,
            self.bad_protobuf,
            self.registration_table_full,
            self.registration_over_budget,
        ]
        .iter()
        .fold(0u64, |a, b| a.saturating_add(*b))
    }
}

impl ChannelCounters {
    pub fn snapshot(&self, transport: TransportStats, reassembly: ReassemblyStats) -> ChannelStats {
        ChannelStats {
            transport,
            reassembly,
            bad_frame: self.bad_frame.get(),
            bad_protobuf: self.bad_protobuf.get(),
            bad_topic_id: self.bad_topic_id.get(),
            unmatched_topic: self.unmatched_topic.get(),
            wrong_cmd: self.wrong_cmd.get(),
            rejected_registration: self.rejected_registration.get(),
            registration_table_full: self.registration_table_full.get(),
            registration_over_budget: self.registration_over_budget.get(),
            registration_unchanged: self.registration_unchanged.get(),
            coalesced_datagrams: self.coalesced.get(),
            tap_panics: self.tap_panics.get(),
        }
    }
}

/// Per-subscriber delivery counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct SubscriberStats {
    /// Messages handed to the application.
    pub delivered: u64,
    /// Payload bytes handed to the application.
    pub delivered_bytes: u64,
    /// Dropped: clock already seen from that publisher.
    pub duplicates: u64,
    /// Dropped: clock older than the newest seen (while `drop_out_of_order` is on).
    pub out_of_order: u64,
    /// Clocks skipped between consecutive messages of a publisher: messages lost upstream.
    pub sequence_gaps: u64,
    /// Delivered samples whose clock jumped more than `JUMP_CONFIRM` ahead of their
    /// publisher's: held unconfirmed (the order state did not move; a lone forged clock stays
    /// here), until a later sample of the stream confirms the jump (then counted in
    /// `sequence_gaps`).
    pub clock_jumps_held: u64,
    /// Times the order filter followed a publisher's stream after a run of rejected samples
    /// with rising clocks (a forged or replayed clock had raised its highest clock).
    pub clock_resyncs: u64,
    /// Dropped: the receive queue was full (the application did not keep up).
    pub queue_overflow: u64,
    /// Payloads the typed subscriber could not decode.
    pub decode_errors: u64,
    /// Publishers whose order state was dropped to stay within the per-subscriber bound.
    pub publishers_forgotten: u64,
    /// Calls of the subscriber's callback that panicked (caught; that message is lost).
    pub callback_panics: u64,
}

/// Per-publisher counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PublisherStats {
    /// `send` calls that went out on the wire.
    pub sent: u64,
    /// Payload bytes of those calls.
    pub sent_bytes: u64,
    /// `send` calls made while no subscriber was connected (not sent, as eCAL does).
    pub not_connected: u64,
    /// `send` calls that failed in the transport.
    pub send_errors: u64,
}
