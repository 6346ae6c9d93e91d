//! A publisher's state and handle. `send` holds no lock while the transport sends: concurrent
//! senders on one publisher never wait for each other's datagrams (each takes its own buffer
//! from a small pool), so a send stalled by the OS (`ENOBUFS`, bounded by `udp.send_timeout_ms`)
//! holds up nobody else.

use super::codec::Codec;
use super::node::{lock, now_us, Inner, NodeError};
use crate::pb::{encode_data_message, DataHeader, DataTypeInformation};
use crate::registration::metrics::RateWindow;
use crate::registration::{topic_sample, Direction};
use crate::stats::{Counter, PublisherStats};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Send buffers kept for reuse per publisher, and the largest one kept.
const POOL: usize = 4;
const POOL_MAX_CAPACITY: usize = 16 << 20;

pub(crate) struct PubShared {
    pub entity_id: u64,
    pub topic: String,
    pub datatype: DataTypeInformation,
    /// Pre-encoded `Sample.topic` of data samples (name, id, pid, host).
    pub topic_header: Vec<u8>,
    pub clock: AtomicI64,
    /// Reused message buffers (taken for the encoding, given back after the send).
    pool: Mutex<Vec<Vec<u8>>>,
    pub connections_local: AtomicUsize,
    pub connections_external: AtomicUsize,
    pub last_size: AtomicI64,
    /// Time of the last `send` call, µs on the node's monotonic clock (`Shared::epoch`): the
    /// tick time of the send rate, as eCAL measures it (every call ticks, connected or not).
    pub last_tick_us: AtomicI64,
    /// Send rate across registration rounds (only the registration thread uses it).
    pub rate: Mutex<RateWindow>,
    pub sent: Counter,
    pub sent_bytes: Counter,
    pub not_connected: Counter,
    pub send_errors: Counter,
}

impl PubShared {
    pub(crate) fn new(entity_id: u64, topic: &str, datatype: DataTypeInformation, topic_header: Vec<u8>) -> Self {
        Self {
            entity_id,
            topic: topic.to_string(),
            datatype,
            topic_header,
            clock: AtomicI64::new(0),
            pool: Mutex::new(Vec::new()),
            connections_local: AtomicUsize::new(0),
            connections_external: AtomicUsize::new(0),
            last_size: AtomicI64::new(0),
            last_tick_us: AtomicI64::new(0),
            rate: Mutex::new(RateWindow::default()),
            sent: Counter::default(),
            sent_bytes: Counter::default(),
            not_connected: Counter::default(),
            send_errors: Counter::default(),
        }
    }

    fn take_buffer(&self) -> Vec<u8> {
        lock(&self.pool).pop().unwrap_or_default()
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        if buf.capacity() <= POOL_MAX_CAPACITY {
            buf.clear();
            let mut pool = lock(&self.pool);
            if pool.len() < POOL {
                pool.push(buf);
            }
        }
    }
}

/// Publishes values of codec `C` on one topic.
pub struct Publisher<C: Codec> {
    pub(crate) node: Arc<Inner>,
    pub(crate) shared: Arc<PubShared>,
    pub(crate) _codec: PhantomData<fn() -> C>,
}

impl<C: Codec> std::fmt::Debug for Publisher<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("topic", &self.shared.topic).field("id", &self.shared.entity_id).finish()
    }
}

impl<C: Codec> Publisher<C> {
    /// The topic name.
    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    /// The eCAL entity id (`topic_id`).
    pub fn entity_id(&self) -> u64 {
        self.shared.entity_id
    }

    /// Connected subscribers (same host, other hosts).
    pub fn connections(&self) -> (usize, usize) {
        (
            self.shared.connections_local.load(Ordering::Relaxed),
            self.shared.connections_external.load(Ordering::Relaxed),
        )
    }

    /// At least one subscriber is connected (what eCAL's `GetSubscriberCount() > 0` says).
    pub fn is_connected(&self) -> bool {
        let (l, e) = self.connections();
        l + e > 0
    }

    /// Waits up to `timeout` for at least one subscriber (`Duration::MAX`: no deadline, until
    /// one connects or the node closes); returns whether one is connected.
    pub fn wait_for_subscriber(&self, timeout: Duration) -> bool {
        let end = Instant::now().checked_add(timeout);
        while !self.is_connected() {
            if end.is_some_and(|end| Instant::now() >= end) || self.node.closed() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Sends one message. As eCAL, the clock advances on every call, but nothing goes on the
    /// wire while no subscriber is connected: then `Ok(false)` is returned (counted).
    ///
    /// # Errors
    /// Transport failure (including the OS refusing datagrams for longer than
    /// `udp.send_timeout_ms`; counted in `send_errors`), message too large to frame, node shut down.
    pub fn send(&self, value: &C::Input) -> Result<bool, NodeError> {
        if self.node.closed() {
            return Err(NodeError::Closed);
        }
        let s = &self.shared;
        let clock = s.clock.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        // A plain store: concurrent senders may leave a slightly older time, which the rate
        // window tolerates (a round without progress keeps the last figure).
        s.last_tick_us.store(self.node.epoch.elapsed().as_micros() as i64, Ordering::Relaxed);
        if !self.is_connected() {
            s.not_connected.inc();
            return Ok(false);
        }
        let plen = C::encoded_len(value);
        let mut buf = s.take_buffer();
        let header = DataHeader {
            topic_name: &s.topic,
            topic_header: &s.topic_header,
            clock,
            time_us: now_us(),
            hash: (s.entity_id ^ ((clock as u64) << 1)) as i64,
        };
        encode_data_message(&mut buf, &header, plen, |out| C::encode(value, out));
        self.node.apply_data_loopback();
        let result = self.node.send_data(&buf);
        s.give_back(buf);
        match result {
            Ok(()) => {
                s.sent.inc();
                s.sent_bytes.add(plen as u64);
                s.last_size.store(plen as i64, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) => {
                s.send_errors.inc();
                Err(e)
            }
        }
    }

    /// A snapshot of this publisher's counters.
    pub fn stats(&self) -> PublisherStats {
        let s = &self.shared;
        PublisherStats {
            sent: s.sent.get(),
            sent_bytes: s.sent_bytes.get(),
            not_connected: s.not_connected.get(),
            send_errors: s.send_errors.get(),
        }
    }
}

impl<C: Codec> Drop for Publisher<C> {
    fn drop(&mut self) {
        lock(&self.node.publishers).remove(&self.shared.entity_id);
        if !self.node.closed() {
            let r = self.node.pub_report(&self.shared);
            self.node.send_registration(&topic_sample(&self.node.identity, Direction::Publisher, &r, true));
        }
    }
}
