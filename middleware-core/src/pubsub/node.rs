//! The runtime: threads and clocks live here, and only here; they drive the pure layers.

use super::codec::Codec;
use super::filter::{FilterTable, Verdict};
use super::tap::{Tap, TappedSample};
use crate::config::{Config, Mode};
use crate::fragment::{split, Outcome, Reassembler, ReassemblyStats};
use crate::pb::{self, CmdType, DataTypeInformation, Sample};
use crate::registration::{
    process_sample, topic_sample, Acceptance, Change, Direction, EntityIds, Identity, RemoteEntity, RemoteProcess,
    RemoteTable, TopicReport, REG_SAMPLE_NAME,
};
use crate::stats::{ChannelCounters, ChannelStats, Counter, PublisherStats, SubscriberStats};
use crate::transport::{Channel, DatagramSink, Endpoint, Transport, TransportError, TransportFactory};
use crate::wire::{SampleFrame, SampleFrameRepr};
use prost::Message;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Receive loops wake at least this often to expire state and notice shutdown.
const POLL: Duration = Duration::from_millis(100);
/// Largest UDP payload; receive buffers have this size.
const RECV_BUF_LEN: usize = 65536;

/// Errors of the pub/sub API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("invalid topic name {0:?}: must be 1..=65534 bytes without NUL")]
    InvalidTopic(String),
    #[error("message of {0} bytes is larger than udp.max_datagram_size allows to frame (4 GiB)")]
    TooLarge(usize),
    #[error("node is shut down")]
    Closed,
}

/// One received message.
#[derive(Debug, Clone, PartialEq)]
pub struct Received<T> {
    pub value: T,
    /// Entity id of the publisher (eCAL `topic_id`).
    pub publisher_id: u64,
    /// The publisher's send counter.
    pub clock: i64,
    /// Send time, µs since the Unix epoch of the sender's clock.
    pub send_time_us: i64,
}

/// Snapshot of a node's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeStats {
    pub registration: ChannelStats,
    pub data: ChannelStats,
    /// Registrations sent.
    pub registrations_sent: u64,
}

type RawCallback = Box<dyn Fn(Received<Vec<u8>>) + Send + Sync>;

/// Messages waiting for `recv`, and how many `recv` calls wait for one (the receive thread
/// signals the condition variable only then: no futex call per message while the reader is busy).
#[derive(Default)]
struct SubQueue {
    items: VecDeque<Received<Vec<u8>>>,
    waiting: usize,
}

struct SubShared {
    entity_id: u64,
    topic: String,
    datatype: DataTypeInformation,
    filters: Mutex<FilterTable>,
    queue: Mutex<SubQueue>,
    ready: Condvar,
    callback: RwLock<Option<RawCallback>>,
    delivered: Counter,
    delivered_bytes: Counter,
    duplicates: Counter,
    out_of_order: Counter,
    sequence_gaps: Counter,
    queue_overflow: Counter,
    decode_errors: Counter,
    last_clock: AtomicI64,
}

impl SubShared {
    fn stats(&self) -> SubscriberStats {
        SubscriberStats {
            delivered: self.delivered.get(),
            delivered_bytes: self.delivered_bytes.get(),
            duplicates: self.duplicates.get(),
            out_of_order: self.out_of_order.get(),
            sequence_gaps: self.sequence_gaps.get(),
            queue_overflow: self.queue_overflow.get(),
            decode_errors: self.decode_errors.get(),
            publishers_forgotten: self.filters.lock().expect("poisoned").forgotten(),
        }
    }
}

struct PubShared {
    entity_id: u64,
    topic: String,
    datatype: DataTypeInformation,
    /// Pre-encoded `Sample.topic` of data samples (name, id, pid, host).
    topic_header: Vec<u8>,
    clock: AtomicI64,
    /// Reused buffers: the message, and the content fields before the payload.
    scratch: Mutex<(Vec<u8>, Vec<u8>)>,
    connections_local: AtomicUsize,
    connections_external: AtomicUsize,
    last_size: AtomicI64,
    sent: Counter,
    sent_bytes: Counter,
    not_connected: Counter,
    send_errors: Counter,
}

struct Inner {
    config: Config,
    identity: Identity,
    ids: EntityIds,
    next_message_id: AtomicU32,
    reg: Box<dyn Transport>,
    data: Box<dyn Transport>,
    publishers: Mutex<HashMap<u64, Arc<PubShared>>>,
    subscribers: RwLock<HashMap<String, Vec<Arc<SubShared>>>>,
    remote: Mutex<RemoteTable>,
    reg_counters: ChannelCounters,
    data_counters: ChannelCounters,
    reg_reassembly: Mutex<ReassemblyStats>,
    data_reassembly: Mutex<ReassemblyStats>,
    registrations_sent: Counter,
    shutdown: AtomicBool,
    wake: (Mutex<bool>, Condvar),
    tap: Option<Arc<dyn Tap>>,
}

/// One participant. Dropping it sends unregistrations and stops its threads.
pub struct Node {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("identity", &self.inner.identity).finish_non_exhaustive()
    }
}

fn random_u64() -> u64 {
    // RandomState is seeded randomly per process by std; mix in time for good measure.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.write_u32(std::process::id());
    h.finish()
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

fn default_identity(config: &Config) -> Identity {
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_default();
    let unit = config.unit_name.clone().unwrap_or_else(|| {
        std::path::Path::new(&exe).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    });
    Identity {
        host_name: config
            .host_name
            .clone()
            .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned()),
        process_id: std::process::id() as i32,
        process_name: exe,
        unit_name: unit,
        process_parameter: std::env::args().collect::<Vec<_>>().join(" "),
    }
}

fn validate_topic(topic: &str) -> Result<(), NodeError> {
    if topic.is_empty() || topic.len() > SampleFrameRepr::MAX_NAME_LEN || topic.contains('\0') {
        return Err(NodeError::InvalidTopic(topic.to_string()));
    }
    Ok(())
}

fn put_varint(out: &mut Vec<u8>, v: u64) {
    prost::encoding::encode_varint(v, out);
}

impl Node {
    /// Opens the registration and data transports through `factory` and starts the node.
    ///
    /// # Errors
    /// A transport could not be opened.
    pub fn new(config: Config, factory: &dyn TransportFactory) -> Result<Self, NodeError> {
        Self::with_tap(config, factory, None)
    }

    /// Like [`Node::new`], with a [`Tap`] that sees every datagram and decoded sample received.
    ///
    /// # Errors
    /// A transport could not be opened.
    pub fn with_tap(
        config: Config,
        factory: &dyn TransportFactory,
        tap: Option<Arc<dyn Tap>>,
    ) -> Result<Self, NodeError> {
        let identity = default_identity(&config);
        let reg = factory.open(&Endpoint::from_config(&config, Channel::Registration))?;
        // Data is received only once there is something to receive it for: a subscriber, a
        // joined topic or a tap (a publisher-only process takes no copy of its own traffic).
        let mut data_ep = Endpoint::from_config(&config, Channel::Data);
        data_ep.receive_on_demand = true;
        let data = factory.open(&data_ep)?;
        if tap.is_some() {
            data.join(config.destination())?;
        }
        let seed = random_u64();
        let inner = Arc::new(Inner {
            ids: EntityIds::new(identity.process_id as u32, (seed >> 32) as u32),
            next_message_id: AtomicU32::new(seed as u32),
            identity,
            reg,
            data,
            publishers: Mutex::new(HashMap::new()),
            subscribers: RwLock::new(HashMap::new()),
            remote: Mutex::new(RemoteTable::default()),
            reg_counters: ChannelCounters::default(),
            data_counters: ChannelCounters::default(),
            reg_reassembly: Mutex::new(ReassemblyStats::default()),
            data_reassembly: Mutex::new(ReassemblyStats::default()),
            registrations_sent: Counter::default(),
            shutdown: AtomicBool::new(false),
            wake: (Mutex::new(false), Condvar::new()),
            tap,
            config,
        });
        tracing::info!(
            host = %inner.identity.host_name,
            pid = inner.identity.process_id,
            mode = %inner.config.mode,
            transport = inner.data.name(),
            group = %inner.config.destination(),
            "node started"
        );
        let mut threads = Vec::new();
        let spawn = |name: &str, f: fn(Arc<Inner>), inner: &Arc<Inner>| {
            let i = Arc::clone(inner);
            std::thread::Builder::new().name(name.into()).spawn(move || f(i)).expect("spawn thread")
        };
        threads.push(spawn("mw-reg-rx", Inner::registration_rx, &inner));
        threads.push(spawn("mw-data-rx", Inner::data_rx, &inner));
        threads.push(spawn("mw-reg-tx", Inner::registration_tx, &inner));
        Ok(Self { inner, threads })
    }

    /// Creates a publisher of `topic` with the codec `C`.
    ///
    /// # Errors
    /// Invalid topic name.
    pub fn publisher<C: Codec>(&self, topic: &str) -> Result<Publisher<C>, NodeError> {
        self.publisher_with_datatype(topic, C::datatype())
    }

    /// Creates a publisher that announces `datatype` instead of the codec's default.
    ///
    /// # Errors
    /// Invalid topic name.
    pub fn publisher_with_datatype<C: Codec>(
        &self,
        topic: &str,
        datatype: DataTypeInformation,
    ) -> Result<Publisher<C>, NodeError> {
        validate_topic(topic)?;
        let entity_id = self.inner.ids.next();
        let header = pb::Topic {
            topic_name: topic.to_string(),
            topic_id: entity_id.to_string(),
            process_id: self.inner.identity.process_id,
            host_name: self.inner.identity.host_name.clone(),
            ..Default::default()
        };
        let shared = Arc::new(PubShared {
            entity_id,
            topic: topic.to_string(),
            datatype,
            topic_header: header.encode_to_vec(),
            clock: AtomicI64::new(0),
            scratch: Mutex::new((Vec::new(), Vec::new())),
            connections_local: AtomicUsize::new(0),
            connections_external: AtomicUsize::new(0),
            last_size: AtomicI64::new(0),
            sent: Counter::default(),
            sent_bytes: Counter::default(),
            not_connected: Counter::default(),
            send_errors: Counter::default(),
        });
        self.inner.publishers.lock().expect("poisoned").insert(entity_id, Arc::clone(&shared));
        self.inner.update_connections();
        self.inner.register_now();
        tracing::debug!(topic, entity_id, "publisher created");
        Ok(Publisher { node: Arc::clone(&self.inner), shared, _codec: PhantomData })
    }

    /// Creates a subscriber of `topic` with the codec `C`.
    ///
    /// # Errors
    /// Invalid topic name, or the transport could not join the topic's group.
    pub fn subscriber<C: Codec>(&self, topic: &str) -> Result<Subscriber<C>, NodeError> {
        self.join_topic(topic)?;
        let entity_id = self.inner.ids.next();
        let shared = Arc::new(SubShared {
            entity_id,
            topic: topic.to_string(),
            datatype: C::datatype(),
            filters: Mutex::new(FilterTable::default()),
            queue: Mutex::new(SubQueue::default()),
            ready: Condvar::new(),
            callback: RwLock::new(None),
            delivered: Counter::default(),
            delivered_bytes: Counter::default(),
            duplicates: Counter::default(),
            out_of_order: Counter::default(),
            sequence_gaps: Counter::default(),
            queue_overflow: Counter::default(),
            decode_errors: Counter::default(),
            last_clock: AtomicI64::new(0),
        });
        self.inner
            .subscribers
            .write()
            .expect("poisoned")
            .entry(topic.to_string())
            .or_default()
            .push(Arc::clone(&shared));
        self.inner.register_now();
        tracing::debug!(topic, entity_id, "subscriber created");
        Ok(Subscriber { node: Arc::clone(&self.inner), shared, _codec: PhantomData })
    }

    /// Receives the data of `topic` without subscribing to it (network mode: joins the group
    /// pre-6.1 senders use for it; 6.1 senders use the base group, joined by the first call). For taps.
    ///
    /// # Errors
    /// Invalid topic name, or the transport could not join the group.
    pub fn join_topic(&self, topic: &str) -> Result<(), NodeError> {
        validate_topic(topic)?;
        // Starts receiving data (the base group in network mode, the port in local mode).
        self.inner.data.join(self.inner.config.destination())?;
        if self.inner.config.mode == Mode::Network {
            // 6.1 senders use the base group, 5.x senders the hashed one: join both (SPEC §8.3).
            let g = crate::topic_group::topic_group(
                topic,
                self.inner.config.network_group,
                self.inner.config.network_mask,
                self.inner.config.group_mapping,
            );
            self.inner.data.join(g)?;
        }
        Ok(())
    }

    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Publishers and subscribers heard through registration (this process's own included
    /// when `registration.loopback` is on).
    pub fn remote_entities(&self) -> Vec<RemoteEntity> {
        self.inner.remote.lock().expect("poisoned").entities().cloned().collect()
    }

    /// Processes heard through registration.
    pub fn remote_processes(&self) -> Vec<RemoteProcess> {
        self.inner.remote.lock().expect("poisoned").processes().cloned().collect()
    }

    pub fn stats(&self) -> NodeStats {
        let i = &self.inner;
        NodeStats {
            registration: i.reg_counters.snapshot(i.reg.stats(), *i.reg_reassembly.lock().expect("poisoned")),
            data: i.data_counters.snapshot(i.data.stats(), *i.data_reassembly.lock().expect("poisoned")),
            registrations_sent: i.registrations_sent.get(),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.inner.shutdown.store(true, Ordering::SeqCst);
        self.inner.register_now();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // data_rx detached its sink before ending; this covers it ending by a panic, so that the
        // capture thread can never hold the last reference to the node.
        self.inner.data.set_sink(None);
    }
}

impl Inner {
    fn closed(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    fn register_now(&self) {
        let (m, c) = &self.wake;
        *m.lock().expect("poisoned") = true;
        c.notify_all();
    }

    /// Frames `sample` under `name` and sends it through `t`.
    fn send_message(&self, t: &dyn Transport, message: &[u8]) -> Result<(), NodeError> {
        let id = self.next_message_id.fetch_add(1, Ordering::Relaxed) as i32;
        let pieces = split(message, self.config.max_datagram_size, id).ok_or(NodeError::TooLarge(message.len()))?;
        for p in pieces {
            t.send(&p.header, p.body)?;
        }
        Ok(())
    }

    fn send_registration(&self, sample: &Sample) {
        let mut buf = Vec::with_capacity(512);
        SampleFrameRepr { name: REG_SAMPLE_NAME }.emit_prefix(&mut buf);
        sample.encode_raw(&mut buf);
        match self.send_message(&*self.reg, &buf) {
            Ok(()) => self.registrations_sent.inc(),
            Err(e) => tracing::warn!(error = %e, "sending registration failed"),
        }
    }

    fn pub_report(&self, p: &PubShared) -> TopicReport {
        TopicReport {
            entity_id: p.entity_id,
            topic_name: p.topic.clone(),
            datatype: p.datatype.clone(),
            active: p.sent.get() > 0,
            topic_size: p.last_size.load(Ordering::Relaxed) as i32,
            connections_local: p.connections_local.load(Ordering::Relaxed) as i32,
            connections_external: p.connections_external.load(Ordering::Relaxed) as i32,
            message_drops: 0,
            data_clock: p.clock.load(Ordering::Relaxed),
            data_frequency_mhz: 0,
        }
    }

    fn sub_report(&self, s: &SubShared) -> TopicReport {
        let st = s.stats();
        TopicReport {
            entity_id: s.entity_id,
            topic_name: s.topic.clone(),
            datatype: s.datatype.clone(),
            active: st.delivered > 0,
            message_drops: (st.sequence_gaps + st.queue_overflow).min(i32::MAX as u64) as i32,
            data_clock: s.last_clock.load(Ordering::Relaxed),
            ..Default::default()
        }
    }

    fn registration_round(&self, unregister: bool) {
        self.send_registration(&process_sample(&self.identity, false));
        let pubs: Vec<_> = self.publishers.lock().expect("poisoned").values().cloned().collect();
        for p in pubs {
            self.send_registration(&topic_sample(
                &self.identity,
                Direction::Publisher,
                &self.pub_report(&p),
                unregister,
            ));
        }
        let subs: Vec<_> = self.subscribers.read().expect("poisoned").values().flatten().cloned().collect();
        for s in subs {
            self.send_registration(&topic_sample(
                &self.identity,
                Direction::Subscriber,
                &self.sub_report(&s),
                unregister,
            ));
        }
        if unregister {
            self.send_registration(&process_sample(&self.identity, true));
        }
    }

    fn registration_tx(self: Arc<Self>) {
        let refresh = self.config.registration_refresh;
        loop {
            if self.closed() {
                self.registration_round(true);
                return;
            }
            self.registration_round(false);
            let (m, c) = &self.wake;
            let mut woken = m.lock().expect("poisoned");
            if !*woken {
                woken = c.wait_timeout(woken, refresh).expect("poisoned").0;
            }
            *woken = false;
        }
    }

    fn acceptance(&self) -> Acceptance {
        Acceptance {
            host_name: self.identity.host_name.clone(),
            process_id: self.identity.process_id,
            network_mode: self.config.mode == Mode::Network,
            loopback: self.config.registration_loopback,
        }
    }

    /// Recomputes every local publisher's connection counts from the remote table.
    fn update_connections(&self) {
        let remote = self.remote.lock().expect("poisoned");
        let pubs = self.publishers.lock().expect("poisoned");
        for p in pubs.values() {
            let (mut local, mut external) = (0, 0);
            for s in remote.udp_subscribers(&p.topic) {
                if s.host_name == self.identity.host_name {
                    local += 1;
                } else {
                    external += 1;
                }
            }
            let before = p.connections_local.load(Ordering::Relaxed) + p.connections_external.load(Ordering::Relaxed);
            p.connections_local.store(local, Ordering::Relaxed);
            p.connections_external.store(external, Ordering::Relaxed);
            if before != local + external {
                tracing::info!(topic = %p.topic, local, external, "publisher connections changed");
            }
        }
    }

    fn receive_loop(
        &self,
        t: &dyn Transport,
        channel: Channel,
        stats: &Mutex<ReassemblyStats>,
        mut on_message: impl FnMut(std::borrow::Cow<'_, [u8]>, std::net::SocketAddr),
        mut on_tick: impl FnMut(Instant),
    ) {
        let mut reassembler = Reassembler::new(self.config.reassembly.clone());
        let mut buf = vec![0u8; RECV_BUF_LEN];
        let mut last_error_log: Option<Instant> = None;
        while !self.closed() {
            let mut on_datagram = |d: &[u8], source: std::net::SocketAddr| {
                let now = Instant::now();
                if let Some(tap) = &self.tap {
                    tap.datagram(channel, source, d);
                }
                if let Outcome::Message(m) = reassembler.on_datagram(now, source, d) {
                    on_message(m, source);
                }
                on_tick(now);
            };
            match t.recv_with(&mut buf, POLL, &mut on_datagram) {
                Ok(true) => {}
                Ok(false) => {
                    let now = Instant::now();
                    reassembler.expire(now);
                    on_tick(now);
                }
                Err(e) => {
                    if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                        tracing::warn!(error = %e, transport = t.name(), "receive failed");
                        last_error_log = Some(Instant::now());
                    }
                    std::thread::sleep(POLL);
                }
            }
            *stats.lock().expect("poisoned") = reassembler.stats();
        }
    }

    fn on_registration(&self, msg: &[u8], source: std::net::SocketAddr, accept: &Acceptance) {
        let c = &self.reg_counters;
        let Ok(frame) = SampleFrame::new_checked(msg) else {
            c.bad_frame.inc();
            return;
        };
        let Ok(sample) = Sample::decode(frame.body()) else {
            c.bad_protobuf.inc();
            tracing::debug!("undecodable registration sample");
            return;
        };
        if let Some(tap) = &self.tap {
            tap.registration(&sample, source);
        }
        let result = self.remote.lock().expect("poisoned").on_sample(Instant::now(), &sample, accept);
        match result {
            Ok(Change::New(id)) => {
                self.update_connections();
                // A newcomer learns about us now rather than at our next refresh: one extra round
                // per new entity, which halves discovery time for late joiners.
                let own = self.publishers.lock().expect("poisoned").contains_key(&id)
                    || self.subscribers.read().expect("poisoned").values().flatten().any(|s| s.entity_id == id);
                if !own {
                    self.register_now();
                }
            }
            Ok(Change::Removed(_)) => self.update_connections(),
            Ok(_) => {}
            Err(crate::registration::Rejected::BadTopicId) => c.bad_topic_id.inc(),
            Err(crate::registration::Rejected::TableFull) => {
                c.registration_table_full.inc();
                tracing::debug!("registration table full; sample ignored");
            }
            Err(r) => {
                c.rejected_registration.inc();
                tracing::trace!(?r, "registration rejected");
            }
        }
    }

    fn registration_rx(self: Arc<Self>) {
        let accept = self.acceptance();
        let mut last_expire = Instant::now();
        self.receive_loop(
            &*self.reg,
            Channel::Registration,
            &self.reg_reassembly,
            |m, source| self.on_registration(&m, source, &accept),
            |now| {
                if now.saturating_duration_since(last_expire) >= POLL {
                    last_expire = now;
                    let gone = self.remote.lock().expect("poisoned").expire(now, self.config.registration_timeout);
                    if !gone.is_empty() {
                        tracing::info!(count = gone.len(), "remote entities timed out");
                        self.update_connections();
                    }
                }
            },
        );
    }

    fn data_rx(self: Arc<Self>) {
        // A transport with a receive thread of its own (the capture) runs the reassembly and
        // delivery there: no hop to this thread. This thread then only expires partial
        // messages and publishes the reassembly counters.
        let reassembler = Arc::new(Mutex::new(Reassembler::new(self.config.reassembly.clone())));
        let (weak, r) = (Arc::downgrade(&self), Arc::clone(&reassembler));
        let sink: DatagramSink = Arc::new(move |d: &[u8], source| {
            // Node::drop detaches the sink before the node goes away, so this always upgrades
            // while the node lives (and the last reference is never dropped here).
            let Some(inner) = weak.upgrade() else { return };
            if let Some(tap) = &inner.tap {
                tap.datagram(Channel::Data, source, d);
            }
            let outcome = {
                let mut r = r.lock().expect("poisoned");
                let o = r.on_datagram(Instant::now(), source, d);
                *inner.data_reassembly.lock().expect("poisoned") = r.stats();
                o
            };
            if let Outcome::Message(m) = outcome {
                inner.on_data(m, source);
            }
        });
        if self.data.set_sink(Some(sink)) {
            while !self.closed() {
                std::thread::sleep(POLL);
                let mut r = reassembler.lock().expect("poisoned");
                r.expire(Instant::now());
                *self.data_reassembly.lock().expect("poisoned") = r.stats();
            }
            self.data.set_sink(None);
            return;
        }
        self.receive_loop(
            &*self.data,
            Channel::Data,
            &self.data_reassembly,
            |m, source| self.on_data(m, source),
            |_| {},
        );
    }

    fn on_data(&self, msg: std::borrow::Cow<'_, [u8]>, source: std::net::SocketAddr) {
        let c = &self.data_counters;
        let Ok(frame) = SampleFrame::new_checked(&msg) else {
            c.bad_frame.inc();
            tracing::debug!(len = msg.len(), "malformed data message frame");
            return;
        };
        let subs = {
            let map = self.subscribers.read().expect("poisoned");
            map.get(frame.name()).filter(|v| !v.is_empty()).cloned().unwrap_or_default()
        };
        if subs.is_empty() && self.tap.is_none() {
            c.unmatched_topic.inc();
            return;
        }
        // A reassembled message is decoded in place: the payload becomes a slice of its buffer,
        // and that buffer (no second allocation) becomes the delivered payload.
        let message_len = msg.len();
        let body_start = message_len - frame.body().len();
        // Borrowed from the subscriber when there is one: no allocation per message.
        let unmatched_name;
        let topic_name: &str = match subs.first() {
            Some(s) => &s.topic,
            None => {
                unmatched_name = frame.name().to_string();
                &unmatched_name
            }
        };
        let body = match msg {
            std::borrow::Cow::Owned(v) => bytes::Bytes::from(v).slice(body_start..),
            std::borrow::Cow::Borrowed(b) => bytes::Bytes::copy_from_slice(&b[body_start..]),
        };
        let Ok(sample) = Sample::decode(body) else {
            c.bad_protobuf.inc();
            tracing::debug!(topic = %topic_name, "undecodable data sample");
            return;
        };
        let topic = sample.topic.unwrap_or_default();
        if sample.cmd_type != CmdType::SetSample as i32 || topic.topic_name != topic_name {
            c.wrong_cmd.inc();
            return;
        }
        let Ok(publisher_id) = topic.topic_id.parse::<u64>() else {
            c.bad_topic_id.inc();
            return;
        };
        if let Some(tap) = &self.tap {
            let content = sample.content.as_ref();
            tap.data_sample(&TappedSample {
                topic: topic_name,
                publisher_id,
                host_name: &topic.host_name,
                clock: content.map_or(0, |c| c.clock),
                send_time_us: content.map_or(0, |c| c.time),
                payload: content.map_or(&[][..], |c| &c.payload[..]),
                message_len,
                source,
            });
        }
        if subs.is_empty() {
            c.unmatched_topic.inc();
            return;
        }
        let mut content = sample.content.unwrap_or_default();
        let now = Instant::now();
        let last = subs.len() - 1;
        let mut payload = Some(std::mem::take(&mut content.payload));
        for (i, s) in subs.iter().enumerate() {
            let verdict = s.filters.lock().expect("poisoned").check(
                now,
                publisher_id,
                content.clock,
                self.config.drop_out_of_order,
            );
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
                        tracing::debug!(topic = %s.topic, publisher_id, gap, "sequence gap");
                    }
                }
            }
            // The last subscriber takes the buffer itself (unique by then: moved, not copied).
            let value: Vec<u8> = if i == last {
                payload.take().map(Vec::from).unwrap_or_default()
            } else {
                payload.as_ref().map(|p| p.to_vec()).unwrap_or_default()
            };
            s.delivered.inc();
            s.delivered_bytes.add(value.len() as u64);
            s.last_clock.store(content.clock, Ordering::Relaxed);
            let r = Received { value, publisher_id, clock: content.clock, send_time_us: content.time };
            let cb = s.callback.read().expect("poisoned");
            if let Some(cb) = cb.as_ref() {
                cb(r);
            } else {
                drop(cb);
                let mut q = s.queue.lock().expect("poisoned");
                if q.items.len() >= self.config.queue_capacity {
                    q.items.pop_front();
                    s.queue_overflow.inc();
                }
                q.items.push_back(r);
                if q.waiting > 0 {
                    s.ready.notify_one();
                }
            }
        }
    }
}

/// Publishes values of codec `C` on one topic.
pub struct Publisher<C: Codec> {
    node: Arc<Inner>,
    shared: Arc<PubShared>,
    _codec: PhantomData<fn() -> C>,
}

impl<C: Codec> std::fmt::Debug for Publisher<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("topic", &self.shared.topic).field("id", &self.shared.entity_id).finish()
    }
}

impl<C: Codec> Publisher<C> {
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

    pub fn is_connected(&self) -> bool {
        let (l, e) = self.connections();
        l + e > 0
    }

    /// Waits up to `timeout` for at least one subscriber; returns whether one is connected.
    pub fn wait_for_subscriber(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while !self.is_connected() {
            if Instant::now() >= end || self.node.closed() {
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
    /// Transport failure, message too large to frame, node shut down.
    pub fn send(&self, value: &C::Input) -> Result<bool, NodeError> {
        if self.node.closed() {
            return Err(NodeError::Closed);
        }
        let s = &self.shared;
        let clock = s.clock.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.is_connected() {
            s.not_connected.inc();
            return Ok(false);
        }
        let plen = C::encoded_len(value);
        let mut scratch = s.scratch.lock().expect("poisoned");
        let (buf, content_head) = &mut *scratch;
        buf.clear();
        content_head.clear();
        // Sample{1 cmd_type, 5 topic, 6 content{1,2,3,6,7, 4 payload}, 8 padding}; fields in any
        // order are valid protobuf, the payload goes last in content so it is written once.
        pb::Content {
            id: 0,
            clock,
            time: now_us(),
            size: i32::try_from(plen).unwrap_or(0),
            hash: (s.entity_id ^ ((clock as u64) << 1)) as i64,
            payload: bytes::Bytes::new(),
        }
        .encode_raw(content_head);
        let payload_field = if plen > 0 { 1 + prost::encoding::encoded_len_varint(plen as u64) + plen } else { 0 };
        let content_len = content_head.len() + payload_field;
        buf.reserve(s.topic.len() + 3 + 2 + 3 + s.topic_header.len() + 11 + content_len + 2);
        SampleFrameRepr { name: &s.topic }.emit_prefix(buf);
        buf.extend_from_slice(&[0x08, CmdType::SetSample as u8, 0x2a]);
        put_varint(buf, s.topic_header.len() as u64);
        buf.extend_from_slice(&s.topic_header);
        buf.push(0x32);
        put_varint(buf, content_len as u64);
        buf.extend_from_slice(content_head);
        if plen > 0 {
            buf.push(0x22);
            put_varint(buf, plen as u64);
            let before = buf.len();
            C::encode(value, buf);
            debug_assert_eq!(buf.len() - before, plen, "Codec::encoded_len disagrees with encode");
        }
        buf.extend_from_slice(&[0x42, 0x00]);
        match self.node.send_message(&*self.node.data, buf) {
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
        self.node.publishers.lock().expect("poisoned").remove(&self.shared.entity_id);
        if !self.node.closed() {
            let r = self.node.pub_report(&self.shared);
            self.node.send_registration(&topic_sample(&self.node.identity, Direction::Publisher, &r, true));
        }
    }
}

/// Receives values of codec `C` from one topic.
pub struct Subscriber<C: Codec> {
    node: Arc<Inner>,
    shared: Arc<SubShared>,
    _codec: PhantomData<fn() -> C>,
}

impl<C: Codec> std::fmt::Debug for Subscriber<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber").field("topic", &self.shared.topic).field("id", &self.shared.entity_id).finish()
    }
}

impl<C: Codec> Subscriber<C> {
    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    pub fn entity_id(&self) -> u64 {
        self.shared.entity_id
    }

    /// Blocking receive: waits up to `timeout` for the next message. Messages that fail to
    /// decode are counted in `decode_errors` and skipped.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Received<C::Output>> {
        let end = Instant::now() + timeout;
        let mut q = self.shared.queue.lock().expect("poisoned");
        loop {
            while let Some(r) = q.items.pop_front() {
                match C::decode(r.value) {
                    Ok(value) => {
                        return Some(Received {
                            value,
                            publisher_id: r.publisher_id,
                            clock: r.clock,
                            send_time_us: r.send_time_us,
                        })
                    }
                    Err(e) => {
                        self.shared.decode_errors.inc();
                        tracing::debug!(error = %e, "payload decode failed");
                    }
                }
            }
            let now = Instant::now();
            if now >= end {
                return None;
            }
            q.waiting += 1;
            q = self.shared.ready.wait_timeout(q, end - now).expect("poisoned").0;
            q.waiting -= 1;
        }
    }

    /// Callback style: `f` runs on the receive thread for every message, instead of queueing.
    /// Keep it short; a slow callback delays all receiving of this node. Messages already queued
    /// go through `f` first, in order.
    pub fn on_receive(&self, f: impl Fn(Received<C::Output>) + Send + Sync + 'static) {
        let shared = Arc::clone(&self.shared);
        let cb: RawCallback = Box::new(move |r: Received<Vec<u8>>| match C::decode(r.value) {
            Ok(value) => {
                f(Received { value, publisher_id: r.publisher_id, clock: r.clock, send_time_us: r.send_time_us })
            }
            Err(e) => {
                shared.decode_errors.inc();
                tracing::debug!(error = %e, "payload decode failed");
            }
        });
        // Messages queued before the callback was set go through it first, in order: the
        // receive thread waits on the lock meanwhile.
        let mut slot = self.shared.callback.write().expect("poisoned");
        let queued: Vec<_> = self.shared.queue.lock().expect("poisoned").items.drain(..).collect();
        for r in queued {
            cb(r);
        }
        *slot = Some(cb);
    }

    /// Publishers of this topic heard through registration.
    pub fn publishers(&self) -> Vec<RemoteEntity> {
        self.node.remote.lock().expect("poisoned").publishers_of(&self.shared.topic).cloned().collect()
    }

    pub fn stats(&self) -> SubscriberStats {
        self.shared.stats()
    }
}

impl<C: Codec> Drop for Subscriber<C> {
    fn drop(&mut self) {
        if let Some(v) = self.node.subscribers.write().expect("poisoned").get_mut(&self.shared.topic) {
            v.retain(|s| !Arc::ptr_eq(s, &self.shared));
        }
        // Break the callback's reference cycle (it holds the shared state).
        *self.shared.callback.write().expect("poisoned") = None;
        if !self.node.closed() {
            let r = self.node.sub_report(&self.shared);
            self.node.send_registration(&topic_sample(&self.node.identity, Direction::Subscriber, &r, true));
        }
    }
}
