//! The node's runtime: it opens a transport per channel with a sink each (`delivery.rs`), runs
//! the registration thread (`discovery.rs`), creates publishers and subscribers, and tears it
//! all down in order. Receive threads belong to the transports; this file owns one thread,
//! `mw-reg-tx`.

use super::codec::Codec;
use super::delivery::ChannelRx;
use super::publisher::{PubShared, Publisher};
use super::subscriber::{SubShared, Subscriber};
use super::tap::Tap;
use crate::config::{Config, Mode, SendMode};
use crate::fragment::{fragment_count, split};
use crate::pb::{self, DataTypeInformation};
use crate::registration::{
    Acceptance, EntityIds, Identity, ProcessState, RemoteEntity, RemoteProcess, RemoteTable, Severity,
};
use crate::stats::{ChannelCounters, ChannelStats, Counter};
use crate::transport::{Channel, DatagramSink, Endpoint, Transport, TransportError, TransportFactory};
use crate::wire::SampleFrameRepr;
use prost::Message;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

/// Locks `m`, recovering from poisoning: user code never runs under this crate's locks (its
/// panics are caught outside them), so a poisoned lock can only follow a defect here, and
/// going on beats turning one panic into a panic on every later call.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Errors of the pub/sub API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The transport failed (opening it, joining a group, or a send).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A topic name that cannot go on the wire: empty, longer than 65 534 bytes, or with a NUL.
    #[error("invalid topic name {0:?}: must be 1..=65534 bytes without NUL")]
    InvalidTopic(String),
    /// A message too large for eCAL's framing (more fragments than a u32 counts, or over 4 GiB).
    #[error("message of {0} bytes is larger than udp.max_datagram_size allows to frame (4 GiB)")]
    TooLarge(usize),
    /// The node was shut down; its publishers and subscribers no longer work.
    #[error("node is shut down")]
    Closed,
}

/// One received message.
#[derive(Debug, Clone, PartialEq)]
pub struct Received<T> {
    /// The decoded message (the codec's output type).
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
#[non_exhaustive]
pub struct NodeStats {
    /// The registration channel (port 14000): datagrams, decode errors, reassembly, transport.
    pub registration: ChannelStats,
    /// The data channel (port 14002).
    pub data: ChannelStats,
    /// Registrations sent.
    pub registrations_sent: u64,
    /// Bytes the remote table's entries are charged now (strings, descriptors and a fixed
    /// overhead each), at most `registration.max_table_bytes`.
    pub remote_table_bytes: u64,
    /// The transport this node uses, and why.
    pub transport: TransportChoice,
}

/// Which transport a node uses and why (e.g. `auto` falling back to sockets), as the code
/// that opened it said: shown in summaries and by `mwctl doctor`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TransportChoice {
    /// `socket`, `npcap`, `loopback`.
    pub name: String,
    /// One line: why this one (empty when it was simply configured).
    pub reason: String,
}

impl std::fmt::Display for TransportChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.reason.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{} ({})", self.name, self.reason)
        }
    }
}

/// Everything the receive path needs, and nothing that refers back to a transport: the
/// transports hold their sinks, the sinks hold this, so there is no cycle through it.
pub(crate) struct Shared {
    pub config: Config,
    pub identity: Identity,
    pub acceptance: Acceptance,
    pub ids: EntityIds,
    pub publishers: Mutex<HashMap<u64, Arc<PubShared>>>,
    pub subscribers: RwLock<HashMap<String, Vec<Arc<SubShared>>>>,
    pub remote: Mutex<RemoteTable>,
    pub reg_counters: ChannelCounters,
    pub data_counters: ChannelCounters,
    pub registrations_sent: Counter,
    pub shutdown: AtomicBool,
    pub wake: (Mutex<bool>, Condvar),
    pub tap: Option<Arc<dyn Tap>>,
    /// What the process registration says about this process's health ([`Node::set_state`]).
    pub process_state: Mutex<ProcessState>,
    /// The clock of publishers' send-rate ticks (`data_frequency`): µs since this instant.
    pub epoch: std::time::Instant,
    /// A subscriber on this host is registered for a topic of one of our publishers: the data
    /// channel's multicast loopback should be on (set by registration, applied by senders).
    pub same_host_subscribers: AtomicBool,
}

impl Shared {
    pub(crate) fn closed(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }
}

/// The node proper: the shared state plus the transports (publishers and subscribers hold it).
pub(crate) struct Inner {
    shared: Arc<Shared>,
    pub reg: Box<dyn Transport>,
    pub data: Box<dyn Transport>,
    reg_rx: Arc<ChannelRx>,
    data_rx: Arc<ChannelRx>,
    next_message_id: AtomicU32,
    choice: TransportChoice,
    /// The data channel's multicast loopback as last set: 0 not yet, 1 off, 2 on.
    data_loopback: std::sync::atomic::AtomicU8,
    /// `udp.send_mode` as it applies: the frame datagram size in `frames` mode, `None` in `ecal`.
    frame_size: Option<usize>,
}

impl std::ops::Deref for Inner {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// One participant. Dropping it sends unregistrations, stops its transports' receive threads
/// (waiting for callbacks in progress on them, except when dropped from inside one) and its
/// registration thread.
pub struct Node {
    inner: Arc<Inner>,
    reg_tx: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("identity", &self.inner.identity)
            .field("transport", &self.inner.choice)
            .finish_non_exhaustive()
    }
}

fn random_u64() -> u64 {
    // RandomState is seeded randomly per process by std; mix in time for good measure.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.write_u32(std::process::id());
    h.finish()
}

pub(crate) fn now_us() -> i64 {
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
        config_file_path: config.file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
    }
}

fn validate_topic(topic: &str) -> Result<(), NodeError> {
    if topic.is_empty() || topic.len() > SampleFrameRepr::MAX_NAME_LEN || topic.contains('\0') {
        return Err(NodeError::InvalidTopic(topic.to_string()));
    }
    Ok(())
}

/// Options of [`Node::open`] beyond the config and the transport factory.
#[derive(Clone, Default)]
pub struct NodeOptions {
    /// Sees every datagram and decoded sample received (tools: monitors, recorders).
    pub tap: Option<Arc<dyn Tap>>,
    /// What the caller chose and why; the name defaults to the transport's own.
    pub transport_reason: String,
}

impl Node {
    /// Opens the registration and data transports through `factory` and starts the node.
    ///
    /// # Errors
    /// A transport could not be opened.
    pub fn new(config: Config, factory: &dyn TransportFactory) -> Result<Self, NodeError> {
        Self::open(config, factory, NodeOptions::default())
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
        Self::open(config, factory, NodeOptions { tap, ..NodeOptions::default() })
    }

    /// Opens the node with `options`.
    ///
    /// # Errors
    /// A transport could not be opened.
    pub fn open(config: Config, factory: &dyn TransportFactory, options: NodeOptions) -> Result<Self, NodeError> {
        let identity = default_identity(&config);
        let seed = random_u64();
        let tap = options.tap;
        let shared = Arc::new(Shared {
            ids: EntityIds::new(identity.process_id as u32, (seed >> 32) as u32),
            acceptance: Shared::acceptance_of(&config, &identity),
            identity,
            publishers: Mutex::new(HashMap::new()),
            subscribers: RwLock::new(HashMap::new()),
            remote: Mutex::new(RemoteTable::with_budget(config.registration_table_bytes)),
            reg_counters: ChannelCounters::default(),
            data_counters: ChannelCounters::default(),
            registrations_sent: Counter::default(),
            shutdown: AtomicBool::new(false),
            wake: (Mutex::new(false), Condvar::new()),
            process_state: Mutex::new(ProcessState::default()),
            epoch: std::time::Instant::now(),
            same_host_subscribers: AtomicBool::new(false),
            tap: tap.clone(),
            config,
        });
        let reg_rx = Arc::new(ChannelRx::new(Arc::clone(&shared), Channel::Registration));
        let data_rx = Arc::new(ChannelRx::new(Arc::clone(&shared), Channel::Data));
        let config = &shared.config;
        let reg = factory.open(
            &Endpoint::from_config(config, Channel::Registration),
            Arc::clone(&reg_rx) as Arc<dyn DatagramSink>,
        )?;
        // Data is received only once there is something to receive it for: a subscriber, a
        // joined topic or a tap (a publisher-only process takes no copy of its own traffic).
        let mut data_ep = Endpoint::from_config(config, Channel::Data);
        data_ep.receive_on_demand = true;
        let data = match factory.open(&data_ep, Arc::clone(&data_rx) as Arc<dyn DatagramSink>) {
            Ok(d) => d,
            Err(e) => {
                reg.close();
                return Err(e.into());
            }
        };
        if tap.is_some() {
            if let Err(e) = data.join(config.destination()) {
                reg.close();
                data.close();
                return Err(e.into());
            }
        }
        let choice = TransportChoice { name: data.name().to_string(), reason: options.transport_reason };
        let frame_size = match config.send_mode {
            SendMode::Ecal => None,
            SendMode::Frames => Some(frame_size(config, &*data)),
            SendMode::Auto => data.segmentation_offload().then(|| frame_size(config, &*data)),
        };
        let inner = Arc::new(Inner {
            shared,
            reg,
            data,
            reg_rx,
            data_rx,
            next_message_id: AtomicU32::new(seed as u32),
            choice,
            data_loopback: std::sync::atomic::AtomicU8::new(0),
            frame_size,
        });
        tracing::info!(
            host = %inner.identity.host_name,
            pid = inner.identity.process_id,
            mode = %inner.config.mode,
            transport = %inner.choice,
            group = %inner.config.destination(),
            send_mode = %inner.config.send_mode,
            frame_size = ?inner.frame_size,
            offload = inner.data.segmentation_offload(),
            "node started"
        );
        let i = Arc::clone(&inner);
        let reg_tx = std::thread::Builder::new()
            .name("mw-reg-tx".into())
            .spawn(move || i.registration_tx())
            .map_err(|e| TransportError::io("spawn the registration thread", e))?;
        Ok(Self { inner, reg_tx: Some(reg_tx) })
    }

    /// The transport this node uses, and why.
    pub fn transport(&self) -> &TransportChoice {
        &self.inner.choice
    }

    /// The size of the datagrams data messages are cut into when `udp.send_mode` is (or
    /// resolved from `auto` to) `frames`; `None` in `ecal` mode.
    pub fn frame_size(&self) -> Option<usize> {
        self.inner.frames()
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
        let shared = Arc::new(PubShared::new(entity_id, topic, datatype, header.encode_to_vec()));
        lock(&self.inner.publishers).insert(entity_id, Arc::clone(&shared));
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
        let c = &self.inner.config;
        let shared = Arc::new(SubShared::new(entity_id, topic, C::datatype(), c.queue_capacity, c.queue_bytes));
        self.inner
            .subscribers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
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
        if self.inner.closed() {
            return Err(NodeError::Closed);
        }
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

    /// Who this node says it is in registration (host, process, unit name).
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// The configuration the node was opened with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Sets the state this process reports in its registration (eCAL's `Process::SetState`),
    /// shown by eCAL Monitor and `mwctl monitor`: a severity, a level (clamped to eCAL's 1-5)
    /// and a short text (at most 1024 bytes are sent). Sent with the next registration round,
    /// which starts at once.
    pub fn set_state(&self, severity: Severity, level: i32, info: &str) {
        let mut end = info.len().min(1024);
        while !info.is_char_boundary(end) {
            end -= 1;
        }
        *lock(&self.inner.process_state) =
            ProcessState { severity, level: level.clamp(1, 5), info: info[..end].to_string() };
        self.inner.register_now();
    }

    /// The state this process reports ([`Node::set_state`]).
    pub fn state(&self) -> ProcessState {
        lock(&self.inner.process_state).clone()
    }

    /// Publishers and subscribers heard through registration (this process's own included
    /// when `registration.loopback` is on).
    pub fn remote_entities(&self) -> Vec<RemoteEntity> {
        lock(&self.inner.remote).entities().cloned().collect()
    }

    /// Processes heard through registration.
    pub fn remote_processes(&self) -> Vec<RemoteProcess> {
        lock(&self.inner.remote).processes().cloned().collect()
    }

    /// A snapshot of the node's counters (see [`NodeStats`]).
    pub fn stats(&self) -> NodeStats {
        let i = &self.inner;
        NodeStats {
            registration: i.reg_counters.snapshot(i.reg.stats(), i.reg_rx.reassembly_stats()),
            data: i.data_counters.snapshot(i.data.stats(), i.data_rx.reassembly_stats()),
            registrations_sent: i.registrations_sent.get(),
            remote_table_bytes: lock(&i.remote).bytes() as u64,
            transport: i.choice.clone(),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let i = &self.inner;
        i.shutdown.store(true, Ordering::SeqCst);
        i.register_now();
        // The registration thread sends the unregistrations, then ends.
        if let Some(t) = self.reg_tx.take() {
            if t.join().is_err() {
                tracing::error!("the registration thread ended by a panic");
            }
        }
        // After these, no receive thread calls into this node (one may still be returning from
        // the callback that is dropping the node right now).
        i.data.close();
        i.reg.close();
        // Break reference cycles through callbacks (a callback holding a publisher of this node).
        let subs: Vec<_> =
            i.subscribers.read().unwrap_or_else(PoisonError::into_inner).values().flatten().cloned().collect();
        for s in subs {
            s.close(false);
        }
    }
}

impl Inner {
    /// Before a data send: the data channel's multicast loopback follows whether a same-host
    /// subscriber is registered (`network.multicast_loopback = true`; `always` keeps it on). A
    /// system call only when it changes, made by the sending thread with no lock held.
    ///
    /// One thread applies a change at a time (it moves the state to "busy" first; others send
    /// meanwhile with the socket as it is), and the state records what it applied, so a change
    /// of the wish while it was applying is applied by the next send.
    pub(crate) fn apply_data_loopback(&self) {
        const BUSY: u8 = 3;
        let want = self.config.multicast_loopback_always || self.same_host_subscribers.load(Ordering::Acquire);
        let code = if want { 2 } else { 1 };
        let current = self.data_loopback.load(Ordering::Acquire);
        if current == code || current == BUSY {
            return;
        }
        if self.data_loopback.compare_exchange(current, BUSY, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            // Leaves "busy" however the call ends: what it applied, or (should a transport
            // panic) the state before, so that the next send tries again.
            struct Leave<'a>(&'a std::sync::atomic::AtomicU8, u8);
            impl Drop for Leave<'_> {
                fn drop(&mut self) {
                    self.0.store(self.1, Ordering::Release);
                }
            }
            let mut leave = Leave(&self.data_loopback, current);
            self.data.set_multicast_loopback(want);
            leave.1 = code;
        }
    }

    /// Frames `message` in datagrams of up to `udp.max_datagram_size` and sends it through `t`
    /// one datagram per call, stopping at the first that fails (eCAL's way; registration).
    pub(crate) fn send_message(&self, t: &dyn Transport, message: &[u8]) -> Result<(), NodeError> {
        let id = self.next_message_id.fetch_add(1, Ordering::Relaxed) as i32;
        let pieces = split(message, self.config.max_datagram_size, id).ok_or(NodeError::TooLarge(message.len()))?;
        for p in pieces {
            t.send(&p.header, p.body)?;
        }
        Ok(())
    }

    /// Sends a data message as `udp.send_mode` says: in `ecal` mode as
    /// [`send_message`](Self::send_message); in `frames` mode cut into frame-sized datagrams
    /// handed to the transport [`SEND_WINDOW`] at a time ([`Transport::send_batch`]), so it can
    /// send them with segmentation offload. The pieces borrow the message (no copy); their
    /// list (40 bytes a datagram, at most a window's worth) is allocated per fragmented message,
    /// as are the transport's system-call vectors for a window. `auto` goes back to `ecal` once
    /// the transport's offload is refused.
    pub(crate) fn send_data(&self, message: &[u8]) -> Result<(), NodeError> {
        let Some(size) = self.frames() else {
            return self.send_message(&*self.data, message);
        };
        let id = self.next_message_id.fetch_add(1, Ordering::Relaxed) as i32;
        let mut pieces = split(message, size, id).ok_or(NodeError::TooLarge(message.len()))?;
        let n = fragment_count(message.len(), size);
        if n == 0 {
            let p = pieces.next().expect("a message is at least one datagram");
            return Ok(self.data.send(&p.header, p.body)?);
        }
        let mut window = Vec::with_capacity((n + 1).min(SEND_WINDOW));
        for p in pieces {
            window.push(p);
            if window.len() == SEND_WINDOW {
                self.data.send_batch(&window)?;
                window.clear();
            }
        }
        if !window.is_empty() {
            self.data.send_batch(&window)?;
        }
        Ok(())
    }

    /// The data channel's datagram size in `frames` mode; `None` in `ecal` mode (also `auto`
    /// after the OS refused the offload).
    pub(crate) fn frames(&self) -> Option<usize> {
        match self.config.send_mode {
            SendMode::Auto if !self.data.segmentation_offload() => None,
            _ => self.frame_size,
        }
    }
}

/// Datagrams handed to [`Transport::send_batch`] at once in `frames` mode: a 1 MiB message of
/// 1472-byte datagrams (726) in one call, larger ones in several, so the lists a send builds stay
/// bounded whatever the message's size.
const SEND_WINDOW: usize = 1024;

/// The datagram size of `frames` mode: `udp.frame_size`, or what the data transport reads from
/// the outgoing interface's MTU, or 1472 (an Ethernet frame's UDP payload).
fn frame_size(config: &Config, data: &dyn Transport) -> usize {
    const ETHERNET: usize = 1500 - 28;
    let size = config.frame_size.or_else(|| data.frame_payload_size()).unwrap_or(ETHERNET);
    size.clamp(crate::wire::HEADER_LEN + 1, crate::wire::MAX_DATAGRAM_LEN)
}
