//! Registration (SPEC §7.3): the samples this process sends about itself, and the table of what
//! it has heard about others. Pure: time is a parameter.

use crate::pb::{self, CmdType, DataTypeInformation, LayerType, Sample, TransportLayer};
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub mod metrics;

/// Sample name used on the registration channel.
pub const REG_SAMPLE_NAME: &str = "reg_sample";
/// What this implementation reports as `ecal_runtime_version`.
pub const RUNTIME_VERSION: &str = concat!("v6.1.1 (middleware-rs ", env!("CARGO_PKG_VERSION"), ")");

/// Who this process is, as written into every registration sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Host name as this process reports it (`host_name`); with `process_id` it identifies the process.
    pub host_name: String,
    /// Operating-system process id.
    pub process_id: i32,
    /// Process name as eCAL shows it (by eCAL's convention the executable's path).
    pub process_name: String,
    /// Unit name given at initialisation (eCAL's `unit_name`, the node name shown by eCAL Monitor).
    pub unit_name: String,
    /// Command line, space separated (eCAL's `process_parameter`).
    pub process_parameter: String,
    /// The configuration file this process loaded (empty: none), as eCAL's `config_file_path`.
    pub config_file_path: String,
}

/// Produces eCAL-style 64-bit entity ids: `(pid & 0xFFFFFF) << 40 | random24 << 16 | counter16`
/// (SPEC §7.1). The random part is drawn once; the counter makes each id in a process unique.
#[derive(Debug)]
pub struct EntityIds {
    prefix: u64,
    counter: std::sync::atomic::AtomicU64,
}

impl EntityIds {
    /// Ids for process `pid`, with `random` (only its low 24 bits are used) drawn once per process.
    pub fn new(pid: u32, random: u32) -> Self {
        let prefix = (u64::from(pid) & 0xFF_FFFF) << 40 | (u64::from(random) & 0xFF_FFFF) << 16;
        Self { prefix, counter: std::sync::atomic::AtomicU64::new(0) }
    }
    /// The next id. Unique within the process for the first 65 536 entities; the counter then wraps.
    pub fn next(&self) -> u64 {
        let c = self.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.prefix | (c & 0xFFFF)
    }
}

/// Publisher or subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Sends data on a topic (registration commands 2 and 12).
    Publisher,
    /// Receives data on a topic (registration commands 3 and 13).
    Subscriber,
}

/// What a local publisher/subscriber reports in its registration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopicReport {
    /// The entity's id (see [`EntityIds`]), sent as eCAL's decimal `topic_id` string.
    pub entity_id: u64,
    /// Topic name.
    pub topic_name: String,
    /// Datatype name, encoding and descriptor (for protobuf, a serialized `FileDescriptorSet`).
    pub datatype: DataTypeInformation,
    /// The UDP layer has carried data.
    pub active: bool,
    /// Size in bytes of the last message sent (publisher) or received (subscriber).
    pub topic_size: i32,
    /// Matching peers on this host (subscribers for a publisher, publishers for a subscriber).
    pub connections_local: i32,
    /// Matching peers on other hosts.
    pub connections_external: i32,
    /// Messages lost, as eCAL counts them: gaps in the per-publisher message clock seen by a
    /// subscriber (0 for publishers).
    pub message_drops: i32,
    /// Messages sent (publisher) or accepted (subscriber) since the entity was created.
    pub data_clock: i64,
    /// Message rate in millihertz (1000 = one message per second), from eCAL's resettable window
    /// (see [`metrics::RateWindow`]).
    pub data_frequency_mhz: i32,
    /// Receive latency (subscribers); publishers send eCAL's empty statistics.
    pub latency: Option<pb::Statistics>,
}

fn layer(kind: LayerType, enabled: bool, active: bool) -> TransportLayer {
    TransportLayer { r#type: kind as i32, version: 2, enabled, active, par_layer: None }
}

/// eCAL's initialised-component bits (`eCAL::Init`) that this implementation has: publisher,
/// subscriber and time (the local system clock). It has no services (0x04), no monitoring
/// component (0x08) and no eCAL log provider (0x10), so it does not claim them.
pub const COMPONENTS: i32 = 0x01 | 0x02 | 0x20;
/// `component_init_info` for [`COMPONENTS`], formatted as eCAL formats it.
pub const COMPONENTS_INFO: &str = "pub|sub|time";
/// The time source: the local system clock, which is what eCAL's `ecaltime-localtime` module
/// provides; reported with that module's name and as synchronised in real time, as an eCAL
/// installation with that module does.
pub const TIME_SYNC_MODULE: &str = "ecaltime-localtime";
/// `eTimeSyncState::tsync_realtime`.
pub const TIME_SYNC_REALTIME: i32 = 1;

/// `eProcessSeverity`: how a process says it is doing (shown by eCAL Monitor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(i32)]
pub enum Severity {
    /// The process has not said (default).
    #[default]
    Unknown = 0,
    /// Working as intended.
    Healthy = 1,
    /// Working, with a problem worth attention.
    Warning = 2,
    /// Barely working.
    Critical = 3,
    /// Not working.
    Failed = 4,
}

/// A process's state as it appears in its registration: severity, severity level (1-5, eCAL's
/// `eProcessSeverityLevel`) and a free text. Default as eCAL's: unknown, level 1, no text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProcessState {
    /// How the process is doing.
    pub severity: Severity,
    /// Severity level 1-5 (eCAL's `eProcessSeverityLevel`; its meaning is up to the application).
    pub level: i32,
    /// Free text shown beside the state.
    pub info: String,
}

impl Default for ProcessState {
    fn default() -> Self {
        Self { severity: Severity::Unknown, level: 1, info: String::new() }
    }
}

/// The cmd 4 (or 14 when `unregister`) sample of this process.
pub fn process_sample(id: &Identity, state: &ProcessState, unregister: bool) -> Sample {
    let cmd = if unregister { CmdType::UnregProcess } else { CmdType::RegProcess };
    let full = !unregister;
    Sample {
        cmd_type: cmd as i32,
        process: Some(pb::Process {
            process_id: id.process_id,
            host_name: id.host_name.clone(),
            process_name: id.process_name.clone(),
            shm_transport_domain: id.host_name.clone(),
            unit_name: id.unit_name.clone(),
            process_parameter: if full { id.process_parameter.clone() } else { String::new() },
            component_init_state: if full { COMPONENTS } else { 0 },
            component_init_info: if full { COMPONENTS_INFO.into() } else { String::new() },
            ecal_runtime_version: if full { RUNTIME_VERSION.into() } else { String::new() },
            config_file_path: if full { id.config_file_path.clone() } else { String::new() },
            time_sync_module_name: if full { TIME_SYNC_MODULE.into() } else { String::new() },
            time_sync_state: if full { TIME_SYNC_REALTIME } else { 0 },
            state: Some(pb::ProcessState {
                severity: state.severity as i32,
                severity_level: state.level,
                info: state.info.clone(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The cmd 2/3 (or 12/13 when `unregister`) sample of one local entity.
pub fn topic_sample(id: &Identity, dir: Direction, r: &TopicReport, unregister: bool) -> Sample {
    let cmd = match (dir, unregister) {
        (Direction::Publisher, false) => CmdType::RegPublisher,
        (Direction::Subscriber, false) => CmdType::RegSubscriber,
        (Direction::Publisher, true) => CmdType::UnregPublisher,
        (Direction::Subscriber, true) => CmdType::UnregSubscriber,
    };
    let mut topic = pb::Topic {
        topic_id: r.entity_id.to_string(),
        host_name: id.host_name.clone(),
        process_id: id.process_id,
        process_name: id.process_name.clone(),
        topic_name: r.topic_name.clone(),
        shm_transport_domain: id.host_name.clone(),
        unit_name: id.unit_name.clone(),
        ..Default::default()
    };
    if !unregister {
        topic.datatype_information = Some(r.datatype.clone());
        topic.transport_layer = match dir {
            // What exists: the UDP writer (eCAL lists a writer's layer once it exists).
            Direction::Publisher => vec![layer(LayerType::UdpMc, true, r.active)],
            // eCAL 6.1 subscribers list every layer they were built with, `enabled` as
            // configured: UDP on, SHM and TCP (which this implementation does not have) off.
            Direction::Subscriber => vec![
                layer(LayerType::UdpMc, true, r.active),
                layer(LayerType::Shm, false, false),
                TransportLayer {
                    par_layer: Some(pb::ConnectionPar {
                        layer_par_tcp: Some(pb::LayerParTcp { port: 0 }),
                        ..Default::default()
                    }),
                    ..layer(LayerType::Tcp, false, false)
                },
            ],
        };
        topic.topic_size = r.topic_size;
        topic.connections_local = r.connections_local;
        topic.connections_external = r.connections_external;
        topic.message_drops = r.message_drops;
        topic.data_clock = r.data_clock;
        topic.data_frequency = r.data_frequency_mhz;
        topic.data_latency_us = Some(r.latency.clone().unwrap_or_else(|| metrics::LatencyStats::default().to_pb()));
    }
    Sample { cmd_type: cmd as i32, topic: Some(topic), ..Default::default() }
}

/// A publisher or subscriber heard through registration.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RemoteEntity {
    /// The entity's id (its `topic_id`).
    pub entity_id: u64,
    /// Publisher or subscriber.
    pub direction: Direction,
    /// Topic name.
    pub topic_name: String,
    /// Host the entity runs on.
    pub host_name: String,
    /// Process id of the entity's process.
    pub process_id: i32,
    /// Name of the entity's process.
    pub process_name: String,
    /// Unit (node) name of the entity's process.
    pub unit_name: String,
    /// Datatype name (for protobuf, the full message name such as `pb.People.Person`).
    pub datatype_name: String,
    /// Datatype encoding (`proto`, `base` for strings, empty for raw bytes).
    pub datatype_encoding: String,
    /// Datatype descriptor (for protobuf, a serialized `FileDescriptorSet`); not serialised to JSON.
    #[serde(skip)]
    pub datatype_descriptor: Vec<u8>,
    /// It lists a usable UDP layer (enabled, or a version < 2 entry; SPEC §7.4).
    pub udp: bool,
    /// It lists no transport layer at all (an eCAL publisher before its first subscriber).
    pub no_layers: bool,
    /// Usable transport layers it lists, by name (`udp`, `shm`, `tcp`), `+` marking active ones.
    pub layers: Vec<String>,
    /// Matching peers on its host, as it reports them.
    pub connections_local: i32,
    /// Matching peers on other hosts, as it reports them.
    pub connections_external: i32,
    /// Messages it has sent (publisher) or accepted (subscriber), as it reports them.
    pub data_clock: i64,
    /// Its message rate in millihertz.
    pub data_frequency_mhz: i32,
    /// Messages it reports lost (subscribers).
    pub message_drops: i32,
    /// Size of the last message sent (publishers).
    pub topic_size: i32,
    /// Registrations received for this entity.
    pub samples: u64,
    /// When its last registration sample was applied; [`RemoteTable::expire`] uses it.
    #[serde(skip)]
    pub last_seen: Instant,
}

/// A process heard through registration.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RemoteProcess {
    /// Host the process runs on.
    pub host_name: String,
    /// Operating-system process id.
    pub process_id: i32,
    /// Process name (eCAL: the executable's path).
    pub process_name: String,
    /// Unit (node) name.
    pub unit_name: String,
    /// `ecal_runtime_version` (eCAL writes e.g. `v6.1.1`; this implementation [`RUNTIME_VERSION`]).
    pub runtime_version: String,
    /// `eProcessSeverity` (0 unknown, 1 healthy, 2 warning, 3 critical, 4 failed), its level
    /// (1-5) and text: what the process says about itself.
    pub state_severity: i32,
    /// Severity level 1-5 (0 when the process sent no state).
    pub state_level: i32,
    /// Free text of the state.
    pub state_info: String,
    /// Initialised components as eCAL writes them (`pub|sub|log|time`).
    pub components: String,
    /// Name of its time synchronisation module (e.g. `ecaltime-localtime`).
    pub time_sync_module: String,
    /// 0 none, 1 realtime, 2 replay.
    pub time_sync_state: i32,
    /// The configuration file it loaded (empty: none or not reported).
    pub config_file_path: String,
    /// When its last registration sample was applied; [`RemoteTable::expire`] uses it.
    #[serde(skip)]
    pub last_seen: Instant,
}

/// What a registration sample changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// First sample of a new entity.
    New(u64),
    /// Another sample of a known entity (its fields were replaced).
    Refreshed(u64),
    /// The entity unregistered (commands 12/13).
    Removed(u64),
    /// First sample of a process not in the table (new, or back after it expired).
    NewProcess,
    /// A known process refreshed, or a process unregistered.
    Process,
    /// Nothing changed: another command, or an unregistration of an unknown entity.
    Ignored,
}

/// Why a registration sample was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejected {
    /// Local mode accepts only this host's samples.
    ForeignHost,
    /// Own process while `registration.loopback` is off.
    OwnProcess,
    /// `topic_id` missing or not a decimal u64.
    BadTopicId,
    /// No `topic` / `process` part for the command.
    Incomplete,
    /// A new entity or process while the table holds its maximum.
    TableFull,
    /// The entry (new, or grown) would take the table past its byte budget
    /// (`registration.max_table_bytes`).
    OverBudget,
}

fn layer_name(l: &TransportLayer) -> String {
    let name = match LayerType::try_from(l.r#type) {
        Ok(LayerType::UdpMc) => "udp".to_string(),
        Ok(LayerType::Shm) => "shm".to_string(),
        Ok(LayerType::Tcp) => "tcp".to_string(),
        _ => format!("layer{}", l.r#type),
    };
    if l.active {
        name + "+"
    } else {
        name
    }
}

/// Remote publishers and subscribers held at most (registration arrives from the network, so
/// the table is bounded; real systems have hundreds).
pub const MAX_REMOTE_ENTITIES: usize = 16_384;
/// The remote table's default byte budget (`registration.max_table_bytes`): what its entries'
/// strings and descriptors may hold together.
pub const DEFAULT_TABLE_BYTES: usize = 64 << 20;
/// What an entry costs the byte budget beyond its strings and descriptor: the record itself,
/// its fingerprints both ways and its place in the topic index.
pub const ENTRY_OVERHEAD: usize = 512;

fn entity_cost(e: &RemoteEntity) -> usize {
    ENTRY_OVERHEAD
        + 2 * e.topic_name.len() // the record and the topic index
        + e.host_name.len()
        + e.process_name.len()
        + e.unit_name.len()
        + e.datatype_name.len()
        + e.datatype_encoding.len()
        + e.datatype_descriptor.len()
        + e.layers.iter().map(|l| l.len() + std::mem::size_of::<String>()).sum::<usize>()
}

fn process_cost(p: &RemoteProcess) -> usize {
    ENTRY_OVERHEAD
        + 2 * p.host_name.len() // the record and its key
        + p.process_name.len()
        + p.unit_name.len()
        + p.runtime_version.len()
        + p.state_info.len()
        + p.components.len()
        + p.time_sync_module.len()
        + p.config_file_path.len()
}
/// Remote processes held at most.
pub const MAX_REMOTE_PROCESSES: usize = 4_096;

/// The acceptance rule of SPEC §7.3.
#[derive(Debug, Clone)]
pub struct Acceptance {
    /// This process's host name: samples from it are local.
    pub host_name: String,
    /// This process's id: samples with it are this process's own.
    pub process_id: i32,
    /// Accept samples from other hosts (`network_mode`); off, only this host's are used.
    pub network_mode: bool,
    /// Accept this process's own samples (`registration.loopback`).
    pub loopback: bool,
}

impl Acceptance {
    fn check(&self, host: &str, pid: i32) -> Result<(), Rejected> {
        if host == self.host_name {
            if pid == self.process_id && !self.loopback {
                return Err(Rejected::OwnProcess);
            }
            Ok(())
        } else if self.network_mode {
            Ok(())
        } else {
            Err(Rejected::ForeignHost)
        }
    }
}

/// Everything heard through registration, with timeouts; bounded in entries
/// ([`MAX_REMOTE_ENTITIES`], [`MAX_REMOTE_PROCESSES`]) and in bytes (a budget: strings and
/// descriptors plus [`ENTRY_OVERHEAD`] per entry).
#[derive(Debug)]
pub struct RemoteTable {
    /// Bytes charged for the entries now, and the most they may be charged.
    bytes: usize,
    budget: usize,
    entities: HashMap<u64, RemoteEntity>,
    processes: HashMap<(String, i32), RemoteProcess>,
    /// Entity ids by topic name, so the entities of one topic are found without a scan of the
    /// whole table (connection counts are updated on every new entity; a scan made discovery
    /// quadratic in the number of entities).
    by_topic: HashMap<String, std::collections::HashSet<u64>>,
    /// The fingerprint of the last sample applied to each entity and process, both ways, so that a
    /// sample identical to the last one (eCAL resends every registration unchanged each refresh
    /// period) is recognised before it is decoded. One entry per entity or process at most.
    fingerprints: HashMap<u64, Key>,
    fingerprint_of: HashMap<Key, u64>,
    /// The fingerprint's key: drawn at random per table, so senders cannot forge collisions.
    hasher: std::hash::RandomState,
}

/// What a fingerprint stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Entity(u64),
    Process((String, i32)),
}

impl Default for RemoteTable {
    fn default() -> Self {
        Self::with_budget(DEFAULT_TABLE_BYTES)
    }
}

impl RemoteTable {
    /// An empty table whose entries may hold `budget` bytes together.
    pub fn with_budget(budget: usize) -> Self {
        Self {
            bytes: 0,
            budget,
            entities: HashMap::new(),
            processes: HashMap::new(),
            by_topic: HashMap::new(),
            fingerprints: HashMap::new(),
            fingerprint_of: HashMap::new(),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// Bytes the entries are charged now (at most the budget).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The byte budget.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Charges the replacement of an entry costing `old` (0: none) by one costing `new`, if that
    /// stays within the budget; says whether it did.
    fn charge(&mut self, old: usize, new: usize) -> bool {
        let fits = self.bytes - old + new <= self.budget;
        if fits {
            self.bytes = self.bytes - old + new;
        }
        fits
    }

    /// The fingerprint of an encoded registration sample (its protobuf bytes), for
    /// [`refresh_unchanged`](Self::refresh_unchanged) and
    /// [`on_sample_fingerprinted`](Self::on_sample_fingerprinted): a keyed 64-bit hash (SipHash
    /// with a key drawn per table).
    pub fn fingerprint(&self, encoded: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(encoded)
    }

    /// When `fingerprint` is that of the last sample applied to an entity or process still in the
    /// table, refreshes it exactly as applying that sample again would (`last_seen`, the sample
    /// count) and returns the change; `None` when the sample must be decoded and applied with
    /// [`on_sample_fingerprinted`](Self::on_sample_fingerprinted). No allocation.
    pub fn refresh_unchanged(&mut self, now: Instant, fingerprint: u64) -> Option<Change> {
        let key = self.fingerprints.get(&fingerprint)?;
        if self.fingerprint_of.get(key) != Some(&fingerprint) {
            return None;
        }
        match key {
            Key::Entity(id) => {
                let e = self.entities.get_mut(id)?;
                e.samples += 1;
                e.last_seen = now;
                Some(Change::Refreshed(*id))
            }
            Key::Process(k) => {
                let p = self.processes.get_mut(k)?;
                p.last_seen = now;
                Some(Change::Process)
            }
        }
    }

    /// Remembers that the sample with `fingerprint` was the last one applied to `key`.
    fn remember(&mut self, key: Key, fingerprint: Option<u64>) {
        let old = match fingerprint {
            Some(fp) => {
                self.fingerprints.insert(fp, key.clone());
                self.fingerprint_of.insert(key, fp)
            }
            None => self.fingerprint_of.remove(&key),
        };
        if let Some(old) = old.filter(|o| Some(*o) != fingerprint) {
            self.forget_fingerprint(old);
        }
    }

    fn forget(&mut self, key: &Key) {
        if let Some(fp) = self.fingerprint_of.remove(key) {
            self.forget_fingerprint(fp);
        }
    }

    fn forget_fingerprint(&mut self, fp: u64) {
        // Only when no other key took it over since.
        if self.fingerprints.get(&fp).is_some_and(|k| self.fingerprint_of.get(k) != Some(&fp)) {
            self.fingerprints.remove(&fp);
        }
    }

    /// Applies one registration sample received at `now`.
    ///
    /// # Errors
    /// Why the sample was not used; the caller counts it.
    pub fn on_sample(&mut self, now: Instant, s: &Sample, accept: &Acceptance) -> Result<Change, Rejected> {
        self.on_sample_fingerprinted(now, s, accept, None)
    }

    /// [`on_sample`](Self::on_sample), remembering `fingerprint` (the
    /// [`fingerprint`](Self::fingerprint) of the sample's encoded bytes) so that the same bytes
    /// next time are applied by [`refresh_unchanged`](Self::refresh_unchanged) without decoding.
    ///
    /// # Errors
    /// Why the sample was not used; the caller counts it.
    pub fn on_sample_fingerprinted(
        &mut self,
        now: Instant,
        s: &Sample,
        accept: &Acceptance,
        fingerprint: Option<u64>,
    ) -> Result<Change, Rejected> {
        let cmd = CmdType::try_from(s.cmd_type).unwrap_or(CmdType::None);
        match cmd {
            CmdType::RegProcess | CmdType::UnregProcess => {
                let p = s.process.as_ref().ok_or(Rejected::Incomplete)?;
                accept.check(&p.host_name, p.process_id)?;
                let key = (p.host_name.clone(), p.process_id);
                let new = cmd == CmdType::RegProcess && !self.processes.contains_key(&key);
                if cmd == CmdType::UnregProcess {
                    if let Some(old) = self.processes.remove(&key) {
                        self.bytes -= process_cost(&old);
                    }
                    self.forget(&Key::Process(key));
                } else if !self.processes.contains_key(&key) && self.processes.len() >= MAX_REMOTE_PROCESSES {
                    return Err(Rejected::TableFull);
                } else {
                    let record = RemoteProcess {
                        host_name: p.host_name.clone(),
                        process_id: p.process_id,
                        process_name: p.process_name.clone(),
                        unit_name: p.unit_name.clone(),
                        runtime_version: p.ecal_runtime_version.clone(),
                        state_severity: p.state.as_ref().map_or(0, |s| s.severity),
                        state_level: p.state.as_ref().map_or(0, |s| s.severity_level),
                        state_info: p.state.as_ref().map(|s| s.info.clone()).unwrap_or_default(),
                        components: p.component_init_info.clone(),
                        time_sync_module: p.time_sync_module_name.clone(),
                        time_sync_state: p.time_sync_state,
                        config_file_path: p.config_file_path.clone(),
                        last_seen: now,
                    };
                    if !self.charge(self.processes.get(&key).map_or(0, process_cost), process_cost(&record)) {
                        // A known process stays alive on its old record (it is still there).
                        if let Some(p) = self.processes.get_mut(&key) {
                            p.last_seen = now;
                        }
                        return Err(Rejected::OverBudget);
                    }
                    self.processes.insert(key, record);
                    self.remember(Key::Process((p.host_name.clone(), p.process_id)), fingerprint);
                }
                Ok(if new { Change::NewProcess } else { Change::Process })
            }
            CmdType::RegPublisher | CmdType::RegSubscriber | CmdType::UnregPublisher | CmdType::UnregSubscriber => {
                let t = s.topic.as_ref().ok_or(Rejected::Incomplete)?;
                accept.check(&t.host_name, t.process_id)?;
                let id: u64 = t.topic_id.parse().map_err(|_| Rejected::BadTopicId)?;
                if matches!(cmd, CmdType::UnregPublisher | CmdType::UnregSubscriber) {
                    return Ok(match self.entities.remove(&id) {
                        Some(e) => {
                            self.bytes -= entity_cost(&e);
                            self.unindex(&e.topic_name, id);
                            self.forget(&Key::Entity(id));
                            Change::Removed(id)
                        }
                        None => Change::Ignored,
                    });
                }
                let direction = if cmd == CmdType::RegPublisher { Direction::Publisher } else { Direction::Subscriber };
                let dt = t.datatype_information.clone().unwrap_or_default();
                let prev = self.entities.get(&id).map_or(0, |e| e.samples);
                if prev == 0 && self.entities.len() >= MAX_REMOTE_ENTITIES {
                    return Err(Rejected::TableFull);
                }
                let record = RemoteEntity {
                    entity_id: id,
                    direction,
                    topic_name: t.topic_name.clone(),
                    host_name: t.host_name.clone(),
                    process_id: t.process_id,
                    process_name: t.process_name.clone(),
                    unit_name: t.unit_name.clone(),
                    datatype_name: dt.name,
                    datatype_encoding: dt.encoding,
                    datatype_descriptor: dt.descriptor_information,
                    udp: t.transport_layer.iter().any(|l| l.r#type == LayerType::UdpMc as i32 && l.is_usable()),
                    no_layers: t.transport_layer.is_empty(),
                    layers: t.transport_layer.iter().filter(|l| l.is_usable()).map(layer_name).collect(),
                    connections_local: t.connections_local,
                    connections_external: t.connections_external,
                    data_clock: t.data_clock,
                    data_frequency_mhz: t.data_frequency,
                    message_drops: t.message_drops,
                    topic_size: t.topic_size,
                    samples: prev + 1,
                    last_seen: now,
                };
                if !self.charge(self.entities.get(&id).map_or(0, entity_cost), entity_cost(&record)) {
                    // A known entity stays alive on its old record (it is still there).
                    if let Some(e) = self.entities.get_mut(&id) {
                        e.last_seen = now;
                    }
                    return Err(Rejected::OverBudget);
                }
                let old = self.entities.insert(id, record);
                if old.as_ref().is_none_or(|o| o.topic_name != t.topic_name) {
                    if let Some(o) = old {
                        self.unindex(&o.topic_name, id);
                    }
                    self.by_topic.entry(t.topic_name.clone()).or_default().insert(id);
                }
                self.remember(Key::Entity(id), fingerprint);
                Ok(if prev == 0 { Change::New(id) } else { Change::Refreshed(id) })
            }
            _ => Ok(Change::Ignored),
        }
    }

    /// Removes entities and processes not refreshed within `timeout`; returns the removed ids.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<u64> {
        let mut gone = Vec::new();
        let mut gone_topics = Vec::new();
        let mut freed = 0;
        self.entities.retain(|id, e| {
            let keep = now.saturating_duration_since(e.last_seen) < timeout;
            if !keep {
                freed += entity_cost(e);
                gone.push(*id);
                gone_topics.push((std::mem::take(&mut e.topic_name), *id));
            }
            keep
        });
        for (topic, id) in gone_topics {
            self.unindex(&topic, id);
            self.forget(&Key::Entity(id));
        }
        let mut gone_processes = Vec::new();
        self.processes.retain(|k, p| {
            let keep = now.saturating_duration_since(p.last_seen) < timeout;
            if !keep {
                freed += process_cost(p);
                gone_processes.push(Key::Process(k.clone()));
            }
            keep
        });
        self.bytes -= freed;
        for k in &gone_processes {
            self.forget(k);
        }
        gone
    }

    /// Whether the process `(host_name, process_id)` is in the table.
    pub fn knows_process(&self, host_name: &str, process_id: i32) -> bool {
        self.processes.contains_key(&(host_name.to_string(), process_id))
    }

    /// The remote entity with id `id`, if it is in the table.
    pub fn entity(&self, id: u64) -> Option<&RemoteEntity> {
        self.entities.get(&id)
    }

    fn unindex(&mut self, topic: &str, id: u64) {
        if let Some(ids) = self.by_topic.get_mut(topic) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_topic.remove(topic);
            }
        }
    }

    /// Every entity of `topic` (found through the topic index, not a scan).
    fn of_topic<'a>(&'a self, topic: &str) -> impl Iterator<Item = &'a RemoteEntity> + 'a {
        self.by_topic.get(topic).into_iter().flatten().filter_map(|id| self.entities.get(id))
    }

    /// Subscribers of `topic` that read UDP, i.e. the connections of a local publisher.
    pub fn udp_subscribers<'a>(&'a self, topic: &str) -> impl Iterator<Item = &'a RemoteEntity> + 'a {
        self.of_topic(topic).filter(|e| e.direction == Direction::Subscriber && e.udp)
    }

    /// Publishers of `topic`, whatever layers they list.
    pub fn publishers_of<'a>(&'a self, topic: &str) -> impl Iterator<Item = &'a RemoteEntity> + 'a {
        self.of_topic(topic).filter(|e| e.direction == Direction::Publisher)
    }

    /// Every remote publisher and subscriber, in no particular order.
    pub fn entities(&self) -> impl Iterator<Item = &RemoteEntity> {
        self.entities.values()
    }

    /// Every remote process, in no particular order.
    pub fn processes(&self) -> impl Iterator<Item = &RemoteProcess> {
        self.processes.values()
    }

    /// Sizes of the two fingerprint maps (for the fuzz targets' bound checks).
    pub(crate) fn fingerprint_entries(&self) -> (usize, usize) {
        (self.fingerprints.len(), self.fingerprint_of.len())
    }

    /// The bytes charged, counted again from the entries (for the fuzz targets: the running
    /// total must never drift from it).
    pub(crate) fn recount(&self) -> usize {
        self.entities.values().map(entity_cost).sum::<usize>()
            + self.processes.values().map(process_cost).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn ident(host: &str, pid: i32) -> Identity {
        Identity {
            host_name: host.into(),
            process_id: pid,
            process_name: "/bin/x".into(),
            unit_name: "unit".into(),
            process_parameter: "x --y".into(),
            config_file_path: String::new(),
        }
    }

    fn acc(host: &str, pid: i32, network: bool, loopback: bool) -> Acceptance {
        Acceptance { host_name: host.into(), process_id: pid, network_mode: network, loopback }
    }

    #[test]
    fn entity_id_layout_matches_spec_example() {
        // cap1: 14431506724487168 = pid 13125, random 6356963, counter 0.
        let ids = EntityIds::new(13125, 6356963);
        assert_eq!(ids.next(), 14431506724487168);
        assert_eq!(ids.next(), 14431506724487169);
    }

    #[test]
    fn subscriber_sample_round_trip_and_table() {
        let me = ident("hostb", 11120);
        let r = TopicReport { entity_id: 12227139674636288, topic_name: "wire_idle".into(), ..Default::default() };
        let s = topic_sample(&me, Direction::Subscriber, &r, false);
        let bytes = s.encode_to_vec();
        let d = Sample::decode(&*bytes).unwrap();
        let mut t = RemoteTable::default();
        let now = Instant::now();
        let a = acc("hosta", 1, true, true);
        assert_eq!(t.on_sample(now, &d, &a), Ok(Change::New(12227139674636288)));
        assert_eq!(t.on_sample(now, &d, &a), Ok(Change::Refreshed(12227139674636288)));
        assert_eq!(t.udp_subscribers("wire_idle").count(), 1);
        assert_eq!(t.udp_subscribers("other").count(), 0);
        assert!(t.expire(now + Duration::from_secs(9), Duration::from_secs(10)).is_empty());
        assert_eq!(t.expire(now + Duration::from_secs(10), Duration::from_secs(10)), vec![12227139674636288]);
        assert_eq!(t.udp_subscribers("wire_idle").count(), 0);
    }

    #[test]
    fn unregistration_removes() {
        let me = ident("hostb", 7);
        let r = TopicReport { entity_id: 5, topic_name: "t".into(), ..Default::default() };
        let mut t = RemoteTable::default();
        let a = acc("hosta", 1, true, true);
        let now = Instant::now();
        t.on_sample(now, &topic_sample(&me, Direction::Publisher, &r, false), &a).unwrap();
        assert_eq!(t.publishers_of("t").count(), 1);
        assert_eq!(t.on_sample(now, &topic_sample(&me, Direction::Publisher, &r, true), &a), Ok(Change::Removed(5)));
        assert_eq!(t.publishers_of("t").count(), 0);
    }

    #[test]
    fn the_topic_index_follows_every_change() {
        let me = ident("hostb", 7);
        let a = acc("hosta", 1, true, true);
        let now = Instant::now();
        let mut t = RemoteTable::default();
        let report = |id, topic: &str| TopicReport { entity_id: id, topic_name: topic.into(), ..Default::default() };
        for id in 0..50u64 {
            let topic = format!("t{}", id % 5);
            let dir = if id % 2 == 0 { Direction::Publisher } else { Direction::Subscriber };
            t.on_sample(now, &topic_sample(&me, dir, &report(id, &topic), false), &a).unwrap();
        }
        let count = |t: &RemoteTable, topic: &str| (t.publishers_of(topic).count(), t.udp_subscribers(topic).count());
        assert_eq!(count(&t, "t0"), (5, 5));
        assert!(t.publishers_of("t0").all(|e| e.topic_name == "t0" && e.direction == Direction::Publisher));
        // An entity that re-registers under another topic moves in the index.
        t.on_sample(now, &topic_sample(&me, Direction::Publisher, &report(0, "t9"), false), &a).unwrap();
        assert_eq!((count(&t, "t0"), count(&t, "t9")), ((4, 5), (1, 0)));
        // Unregistration and expiry take entities out of it.
        t.on_sample(now, &topic_sample(&me, Direction::Subscriber, &report(5, "t0"), true), &a).unwrap();
        assert_eq!(count(&t, "t0"), (4, 4));
        let later = now + Duration::from_secs(5);
        t.on_sample(later, &topic_sample(&me, Direction::Publisher, &report(10, "t0"), false), &a).unwrap();
        let gone = t.expire(now + Duration::from_secs(11), Duration::from_secs(10));
        assert_eq!(gone.len(), 48);
        assert_eq!((count(&t, "t0"), count(&t, "t9")), ((1, 0), (0, 0)));
        assert_eq!(t.by_topic.len(), 1, "emptied topics leave the index");
    }

    /// Applies `s` as a node does: the unchanged-sample fast path first, else decode and apply
    /// with the fingerprint. Returns the change and whether the fast path took it.
    fn apply(t: &mut RemoteTable, now: Instant, s: &Sample, a: &Acceptance) -> (Result<Change, Rejected>, bool) {
        let bytes = s.encode_to_vec();
        let fp = t.fingerprint(&bytes);
        if let Some(c) = t.refresh_unchanged(now, fp) {
            return (Ok(c), true);
        }
        let d = Sample::decode(&*bytes).unwrap();
        (t.on_sample_fingerprinted(now, &d, a, Some(fp)), false)
    }

    #[test]
    fn unchanged_samples_refresh_without_decoding_and_changed_ones_are_applied() {
        let me = ident("hostb", 7);
        let a = acc("hosta", 1, true, true);
        let t0 = Instant::now();
        let mut t = RemoteTable::default();
        let mut r = TopicReport { entity_id: 5, topic_name: "t".into(), data_clock: 1, ..Default::default() };
        let s1 = topic_sample(&me, Direction::Publisher, &r, false);
        assert_eq!(apply(&mut t, t0, &s1, &a), (Ok(Change::New(5)), false));
        // The same bytes again: refreshed by the fast path, as applying it would (count, time).
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(apply(&mut t, t1, &s1, &a), (Ok(Change::Refreshed(5)), true));
        assert_eq!((t.entity(5).unwrap().samples, t.entity(5).unwrap().last_seen), (2, t1));
        // A changed field: decoded and applied; the old bytes no longer match.
        r.data_clock = 2;
        let s2 = topic_sample(&me, Direction::Publisher, &r, false);
        assert_eq!(apply(&mut t, t1, &s2, &a), (Ok(Change::Refreshed(5)), false));
        assert_eq!(t.entity(5).unwrap().data_clock, 2);
        assert_eq!(t.refresh_unchanged(t1, t.fingerprint(&s1.encode_to_vec())), None);
        assert_eq!(apply(&mut t, t1, &s2, &a), (Ok(Change::Refreshed(5)), true));
        // However often an entity changes, it holds one fingerprint.
        for clock in 3..100 {
            r.data_clock = clock;
            apply(&mut t, t1, &topic_sample(&me, Direction::Publisher, &r, false), &a).0.unwrap();
        }
        assert_eq!((t.fingerprints.len(), t.fingerprint_of.len()), (1, 1));
        // Expiry uses the refreshed time, and takes the fingerprint with the entity.
        let s = topic_sample(&me, Direction::Publisher, &r, false);
        let t2 = t1 + Duration::from_secs(9);
        assert_eq!(apply(&mut t, t2, &s, &a), (Ok(Change::Refreshed(5)), true));
        assert!(t.expire(t1 + Duration::from_secs(10), Duration::from_secs(10)).is_empty());
        assert_eq!(t.expire(t2 + Duration::from_secs(10), Duration::from_secs(10)), vec![5]);
        assert!(t.fingerprints.is_empty() && t.fingerprint_of.is_empty());
        assert_eq!(apply(&mut t, t2, &s, &a), (Ok(Change::New(5)), false), "an expired entity comes back as new");
        // Unregistration: the entity and its fingerprint go; its old sample makes it new again.
        let un = topic_sample(&me, Direction::Publisher, &r, true);
        assert_eq!(apply(&mut t, t2, &un, &a), (Ok(Change::Removed(5)), false));
        assert!(t.fingerprints.is_empty() && t.fingerprint_of.is_empty());
        assert_eq!(apply(&mut t, t2, &s, &a), (Ok(Change::New(5)), false));
    }

    #[test]
    fn unchanged_process_samples_and_rejected_samples() {
        let me = ident("hostb", 7);
        let a = acc("hosta", 1, true, true);
        let now = Instant::now();
        let mut t = RemoteTable::default();
        let p = process_sample(&me, &ProcessState::default(), false);
        assert_eq!(apply(&mut t, now, &p, &a), (Ok(Change::NewProcess), false));
        let later = now + Duration::from_secs(6);
        assert_eq!(apply(&mut t, later, &p, &a), (Ok(Change::Process), true));
        assert!(t.expire(now + Duration::from_secs(10), Duration::from_secs(10)).is_empty());
        assert_eq!(t.processes().count(), 1, "the fast path refreshed the process");
        let un = process_sample(&me, &ProcessState::default(), true);
        assert_eq!(apply(&mut t, later, &un, &a), (Ok(Change::Process), false));
        assert_eq!(t.processes().count(), 0);
        // Decoded again (no fingerprint): a known process is no news.
        assert_eq!(t.on_sample(now, &p, &a), Ok(Change::NewProcess));
        assert_eq!(t.on_sample(now, &p, &a), Ok(Change::Process));
        assert_eq!(t.on_sample(now, &un, &a), Ok(Change::Process));
        assert!(t.fingerprints.is_empty() && t.fingerprint_of.is_empty());
        // A rejected sample is never remembered: it is checked every time.
        let own = acc("hostb", 7, true, false);
        assert_eq!(apply(&mut t, now, &p, &own), (Err(Rejected::OwnProcess), false));
        assert_eq!(apply(&mut t, now, &p, &own), (Err(Rejected::OwnProcess), false));
        assert!(t.fingerprints.is_empty());
        // Another table draws another key: fingerprints cannot be predicted from outside.
        let bytes = p.encode_to_vec();
        assert_ne!(t.fingerprint(&bytes), RemoteTable::default().fingerprint(&bytes));
    }

    #[test]
    fn acceptance_rules() {
        let s = topic_sample(
            &ident("hostb", 7),
            Direction::Subscriber,
            &TopicReport { entity_id: 1, topic_name: "t".into(), ..Default::default() },
            false,
        );
        let mut t = RemoteTable::default();
        let now = Instant::now();
        assert_eq!(t.on_sample(now, &s, &acc("hosta", 1, false, true)), Err(Rejected::ForeignHost));
        assert_eq!(t.on_sample(now, &s, &acc("hostb", 7, false, false)), Err(Rejected::OwnProcess));
        assert!(t.on_sample(now, &s, &acc("hostb", 7, false, true)).is_ok());
        let mut bad = s.clone();
        bad.topic.as_mut().unwrap().topic_id = "abc".into();
        assert_eq!(t.on_sample(now, &bad, &acc("hostb", 8, true, true)), Err(Rejected::BadTopicId));
    }

    #[test]
    fn table_is_bounded() {
        let me = ident("h", 1);
        let a = acc("h", 2, true, true);
        let mut t = RemoteTable::default();
        let now = Instant::now();
        for id in 0..MAX_REMOTE_ENTITIES as u64 {
            let r = TopicReport { entity_id: id, topic_name: "t".into(), ..Default::default() };
            t.on_sample(now, &topic_sample(&me, Direction::Subscriber, &r, false), &a).unwrap();
        }
        let r = TopicReport { entity_id: u64::MAX, topic_name: "t".into(), ..Default::default() };
        let s = topic_sample(&me, Direction::Subscriber, &r, false);
        assert_eq!(t.on_sample(now, &s, &a), Err(Rejected::TableFull));
        // Known entities still refresh.
        let r = TopicReport { entity_id: 5, topic_name: "t".into(), ..Default::default() };
        assert_eq!(
            t.on_sample(now, &topic_sample(&me, Direction::Subscriber, &r, false), &a),
            Ok(Change::Refreshed(5))
        );
    }

    #[test]
    fn a_byte_budget_bounds_a_flood_of_large_descriptors_and_frees_what_expires() {
        let me = ident("liar", 9);
        let a = acc("h", 2, true, true);
        let t0 = Instant::now();
        let mut t = RemoteTable::with_budget(1 << 20);
        let big = |id: u64, len: usize| {
            let mut r = TopicReport { entity_id: id, topic_name: format!("flood{id}"), ..Default::default() };
            r.datatype.descriptor_information = vec![7; len];
            topic_sample(&me, Direction::Publisher, &r, false)
        };
        let mut over = 0;
        for id in 0..100u64 {
            match t.on_sample(t0, &big(id, 60_000), &a) {
                Ok(Change::New(_)) => {}
                Err(Rejected::OverBudget) => over += 1,
                other => panic!("{other:?}"),
            }
            assert!(t.bytes() <= t.budget());
        }
        let held = t.entities().count();
        assert_eq!(held, (1 << 20) / (60_000 + ENTRY_OVERHEAD + 2 * "floodNN".len() + 40));
        assert_eq!(over, 100 - held);
        // A known entry that grows past the budget is refused and keeps its old record, which
        // its refusals keep alive.
        let t1 = t0 + Duration::from_secs(8);
        assert_eq!(t.on_sample(t1, &big(0, 900_000), &a), Err(Rejected::OverBudget));
        assert_eq!(t.entity(0).unwrap().datatype_descriptor.len(), 60_000);
        assert_eq!(t.expire(t0 + Duration::from_secs(11), Duration::from_secs(10)).contains(&0), false);
        assert_eq!(t.entity(0).unwrap().last_seen, t1);
        // Shrinking is always allowed; unregistration and expiry give the bytes back exactly.
        let before = t.bytes();
        t.on_sample(t0, &big(0, 10), &a).unwrap();
        assert_eq!(t.bytes(), before - 59_990);
        t.on_sample(
            t0,
            &topic_sample(&me, Direction::Publisher, &TopicReport { entity_id: 1, ..Default::default() }, true),
            &a,
        )
        .unwrap();
        let p = process_sample(&me, &ProcessState::default(), false);
        t.on_sample(t0, &p, &a).unwrap();
        assert!(t.bytes() > 0);
        t.expire(t0 + Duration::from_secs(11), Duration::from_secs(10));
        assert_eq!((t.bytes(), t.entities().count(), t.processes().count()), (0, 0, 0));
    }

    /// What a forged registration naming a live identity can do, and that the real entity's next
    /// refresh (its unchanged bytes, through the fast path a node uses) undoes it exactly.
    #[test]
    fn forged_registrations_of_live_identities_last_one_refresh_at_most() {
        let me = ident("hostb", 7);
        let a = acc("hosta", 1, true, true);
        let t0 = Instant::now();
        let report = TopicReport { entity_id: 5, topic_name: "steer".into(), ..Default::default() };
        let real_pub = topic_sample(&me, Direction::Publisher, &report, false);
        let real_proc = process_sample(&me, &ProcessState::default(), false);
        let fresh = || {
            let mut t = RemoteTable::default();
            apply(&mut t, t0, &real_pub, &a).0.unwrap();
            apply(&mut t, t0, &real_proc, &a).0.unwrap();
            t
        };
        let view = |t: &RemoteTable| {
            let e = t.entity(5).cloned().map(|mut e| {
                e.samples = 0;
                e.last_seen = t0;
                e
            });
            let mut p: Vec<RemoteProcess> = t.processes().cloned().collect();
            p.iter_mut().for_each(|p| p.last_seen = t0);
            (e, p, t.publishers_of("steer").count(), t.bytes())
        };
        let want = view(&fresh());
        let liar = ident("evilhost", 666);
        let forgeries: Vec<(&str, Sample)> = vec![
            ("unregister the live publisher", topic_sample(&me, Direction::Publisher, &report, true)),
            (
                "its id with another topic",
                topic_sample(
                    &me,
                    Direction::Publisher,
                    &TopicReport { topic_name: "other".into(), ..report.clone() },
                    false,
                ),
            ),
            ("its id from another host", topic_sample(&liar, Direction::Subscriber, &report, false)),
            ("unregister the live process", process_sample(&me, &ProcessState::default(), true)),
            (
                "the live process with other fields",
                process_sample(
                    &Identity { unit_name: "impostor".into(), ..me.clone() },
                    &ProcessState { severity: Severity::Failed, ..Default::default() },
                    false,
                ),
            ),
        ];
        for (what, forged) in forgeries {
            let mut t = fresh();
            apply(&mut t, t0, &forged, &a).0.unwrap();
            assert_ne!(view(&t), want, "{what}: the forgery had no effect, so this case proves nothing");
            // One refresh period later the real process sends its registration again, unchanged.
            let t1 = t0 + Duration::from_secs(1);
            apply(&mut t, t1, &real_pub, &a).0.unwrap();
            apply(&mut t, t1, &real_proc, &a).0.unwrap();
            assert_eq!(view(&t), want, "{what}: not undone by the real entity's next refresh");
            // Nothing of the forgery stays behind to expire later either.
            t.expire(t1 + Duration::from_secs(10), Duration::from_secs(10));
            assert_eq!(t.bytes(), 0, "{what}");
        }
    }

    #[test]
    fn layer_rules() {
        // A layer entry with version 0 counts as enabled (SPEC §7.4).
        let mut s = topic_sample(
            &ident("h", 1),
            Direction::Subscriber,
            &TopicReport { entity_id: 1, topic_name: "t".into(), ..Default::default() },
            false,
        );
        let topic = s.topic.as_mut().unwrap();
        topic.transport_layer = vec![TransportLayer { r#type: 1, ..Default::default() }];
        let mut t = RemoteTable::default();
        let a = acc("h", 2, true, true);
        t.on_sample(Instant::now(), &s, &a).unwrap();
        assert_eq!(t.udp_subscribers("t").count(), 1);
        // Only SHM enabled: not a UDP connection.
        s.topic.as_mut().unwrap().transport_layer =
            vec![TransportLayer { r#type: 4, version: 2, enabled: true, ..Default::default() }];
        t.on_sample(Instant::now(), &s, &a).unwrap();
        assert_eq!(t.udp_subscribers("t").count(), 0);
    }
}
