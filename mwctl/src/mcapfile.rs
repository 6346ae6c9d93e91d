//! MCAP recordings: `mwctl record --out FILE.mcap` writes the data of the recorded topics, one
//! channel per topic with the topic's protobuf schema (the `FileDescriptorSet` its publisher
//! registers), and `mwctl replay FILE.mcap` publishes it again.
//!
//! Uses the `mcap` crate (the format's reference Rust implementation) for writing and reading.
//!
//! # Threads and bounds
//! The node's receive threads only hand each message over ([`McapTap`]): they copy it into a
//! queue bounded in messages and bytes (full: the message is dropped and counted) and never
//! touch the file. One writer thread owns the file: it creates channels as topics'
//! datatypes become known, holds messages of a topic whose datatype has not been heard yet
//! (bounded in bytes and time; then they go to a schemaless channel, counted), and ends the
//! current chunk every second, so a recording killed outright loses at most the last second.
//! Memory is bounded by the queue, the held messages and one chunk, however long the recording.

use anyhow::Context;
use mcap::records::{MessageHeader, Metadata};
use middleware::core::pb::{CmdType, DataTypeInformation, Sample};
use middleware::core::{Tap, TappedSample};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::io::{BufWriter, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Messages queued between the receive threads and the writer thread, at most.
const QUEUE_MESSAGES: usize = 65_536;
/// Payload bytes queued between the receive threads and the writer thread, at most.
const QUEUE_BYTES: usize = 256 << 20;
/// Bytes of messages held while their topic's datatype is unknown, at most; beyond it the topic
/// that has waited longest goes to a schemaless channel.
const HELD_BYTES: usize = 64 << 20;
/// Topics whose datatype the tap remembers (to send only changes to the writer), at most.
const MAX_TOPICS: usize = 65_536;
/// Uncompressed bytes per chunk.
const CHUNK_SIZE: u64 = 4 << 20;
/// The longest a written message stays in the unfinished chunk.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Message encoding of channels whose messages are bytes with no schema.
pub const RAW_ENCODING: &str = "application/octet-stream";
/// Message encoding of channels of eCAL strings (`std::string` / `base`).
pub const TEXT_ENCODING: &str = "text/plain; charset=utf-8";
/// Channel metadata keys holding the topic's eCAL datatype, so replay announces it again.
pub const META_DATATYPE_NAME: &str = "ecal.datatype.name";
/// See [`META_DATATYPE_NAME`].
pub const META_DATATYPE_ENCODING: &str = "ecal.datatype.encoding";

/// Chunk compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    /// Zstandard (what most MCAP files use).
    Zstd,
    /// LZ4: faster, larger files.
    Lz4,
    /// Uncompressed chunks.
    None,
}

/// Counters of an MCAP recording (printed each second and at the end).
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages written to the file.
    pub messages: AtomicU64,
    /// Payload bytes written.
    pub bytes: AtomicU64,
    /// Channels created (one per topic).
    pub channels: AtomicU64,
    /// Dropped: the writer did not keep up (queue full in messages or bytes).
    pub queue_dropped: AtomicU64,
    /// Messages written to a schemaless channel because their topic's datatype did not arrive
    /// in time (or the held bytes reached their bound).
    pub schemaless_fallback: AtomicU64,
    /// Messages that waited for their topic's datatype (and were written once it came).
    pub waited_for_schema: AtomicU64,
    /// Topics whose datatype changes are not tracked (beyond the tap's bound).
    pub topics_untracked: AtomicU64,
    /// Write failures (the first is logged; the recording ends with an error).
    pub write_errors: AtomicU64,
}

/// What the writer thread is told.
enum Event {
    /// A publisher of `topic` registered with this datatype.
    Datatype { topic: String, datatype: DataTypeInformation },
    /// One message.
    Message(Msg),
    /// Finish the file (sent by [`McapRecording::finish`]; what the tap sends later is dropped).
    Stop,
}

struct Msg {
    topic: String,
    payload: Vec<u8>,
    log_time_ns: u64,
    publish_time_ns: u64,
    sequence: u32,
}

fn hash_of(dt: &DataTypeInformation) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (dt.name.as_str(), dt.encoding.as_str(), dt.descriptor_information.as_slice()).hash(&mut h);
    h.finish()
}

fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// The node tap of an MCAP recording: forwards data samples of the recorded topics, and the
/// datatypes their publishers register, to the writer thread.
pub struct McapTap {
    topics: HashSet<String>,
    tx: SyncSender<Event>,
    queued_bytes: Arc<AtomicUsize>,
    counters: Arc<Counters>,
    /// Per topic: hash of the datatype last sent to the writer.
    sent_datatypes: Mutex<HashMap<String, u64>>,
}

impl McapTap {
    fn wanted(&self, topic: &str) -> bool {
        self.topics.is_empty() || self.topics.contains(topic)
    }
}

impl Tap for McapTap {
    fn data_sample(&self, s: &TappedSample<'_>) {
        if !self.wanted(s.topic) {
            return;
        }
        let len = s.payload.len();
        if self.queued_bytes.fetch_add(len, Ordering::Relaxed) + len > QUEUE_BYTES {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.counters.queue_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let msg = Msg {
            topic: s.topic.to_string(),
            payload: s.payload.to_vec(),
            log_time_ns: unix_ns(),
            publish_time_ns: u64::try_from(s.send_time_us).unwrap_or(0).saturating_mul(1000),
            // MCAP sequences are 32 bits; eCAL clocks start at 1 and rarely pass 2^32.
            sequence: s.clock as u32,
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(Event::Message(msg)) {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.counters.queue_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn registration(&self, sample: &Sample, _source: SocketAddr) {
        if sample.cmd_type != CmdType::RegPublisher as i32 {
            return;
        }
        let Some(topic) = &sample.topic else { return };
        if !self.wanted(&topic.topic_name) {
            return;
        }
        let datatype = topic.datatype_information.clone().unwrap_or_default();
        let h = hash_of(&datatype);
        {
            let mut sent = self.sent_datatypes.lock().expect("poisoned");
            match sent.get(&topic.topic_name) {
                Some(&prev) if prev == h => return,
                None if sent.len() >= MAX_TOPICS => {
                    // Not remembered: sent every time (the writer ignores repeats).
                    self.counters.topics_untracked.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    sent.insert(topic.topic_name.clone(), h);
                }
            }
        }
        let ev = Event::Datatype { topic: topic.topic_name.clone(), datatype };
        if self.tx.try_send(ev).is_err() {
            // Forget it, so the next registration (within a second) tries again.
            self.sent_datatypes.lock().expect("poisoned").remove(&topic.topic_name);
        }
    }
}

/// Options of an MCAP recording.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// The file to write.
    pub path: PathBuf,
    /// Topics recorded (empty: all).
    pub topics: Vec<String>,
    /// Chunk compression.
    pub compression: Compression,
    /// How long messages wait for their topic's datatype before going schemaless.
    pub schema_wait: Duration,
    /// Recorded in the file's metadata.
    pub host: String,
}

/// A running MCAP recording: the tap for the node, and the writer thread.
pub struct McapRecording {
    /// Give this to the node.
    pub tap: Arc<McapTap>,
    /// The counters, updated live.
    pub counters: Arc<Counters>,
    writer: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl McapRecording {
    /// Creates the file and starts the writer thread.
    ///
    /// # Errors
    /// The file cannot be created.
    pub fn start(opts: RecordOptions) -> anyhow::Result<Self> {
        let file = std::fs::File::create(&opts.path).with_context(|| format!("creating {}", opts.path.display()))?;
        let compression = match opts.compression {
            Compression::Zstd => Some(mcap::Compression::Zstd),
            Compression::Lz4 => Some(mcap::Compression::Lz4),
            Compression::None => None,
        };
        let writer = mcap::WriteOptions::new()
            .compression(compression)
            .chunk_size(Some(CHUNK_SIZE))
            .library(concat!("mwctl ", env!("CARGO_PKG_VERSION")))
            .create(BufWriter::with_capacity(1 << 20, file))
            .with_context(|| format!("writing the MCAP header to {}", opts.path.display()))?;
        let (tx, rx) = sync_channel(QUEUE_MESSAGES);
        let counters = Arc::new(Counters::default());
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let tap = Arc::new(McapTap {
            topics: opts.topics.iter().cloned().collect(),
            tx,
            queued_bytes: Arc::clone(&queued_bytes),
            counters: Arc::clone(&counters),
            sent_datatypes: Mutex::default(),
        });
        let mut w = FileWriter {
            out: writer,
            opts,
            counters: Arc::clone(&counters),
            queued_bytes,
            channels: HashMap::new(),
            datatypes: BTreeMap::new(),
            held: HashMap::new(),
            held_order: VecDeque::new(),
            held_bytes: 0,
        };
        let writer = std::thread::Builder::new()
            .name("mwctl-mcap".into())
            .spawn(move || w.run(rx))
            .context("starting the MCAP writer thread")?;
        Ok(Self { tap, counters, writer: Some(writer) })
    }

    /// Stops the writer once the node is gone (its tap dropped): writes what is queued and held,
    /// the metadata, the summary and the index, and closes the file.
    ///
    /// # Errors
    /// Writing failed.
    pub fn finish(self) -> anyhow::Result<()> {
        let McapRecording { tap, writer, .. } = self;
        // Queued behind everything the tap has sent; blocks while the queue is full, which the
        // writer is emptying. Fails only if the writer has already stopped (on a write error).
        let _ = tap.tx.send(Event::Stop);
        match writer.map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => anyhow::bail!("the MCAP writer thread panicked"),
            None => Ok(()),
        }
    }
}

struct FileWriter {
    out: mcap::Writer<BufWriter<std::fs::File>>,
    opts: RecordOptions,
    counters: Arc<Counters>,
    queued_bytes: Arc<AtomicUsize>,
    /// Topic -> channel id.
    channels: HashMap<String, u16>,
    /// Topic -> the eCAL datatype its channel was created with (for the metadata).
    datatypes: BTreeMap<String, DataTypeInformation>,
    /// Messages of topics whose datatype is not known yet, with when the first arrived.
    held: HashMap<String, (Instant, Vec<Msg>)>,
    held_order: VecDeque<String>,
    held_bytes: usize,
}

/// An MCAP schema: name, encoding, data.
type SchemaParts<'a> = (&'a str, &'a str, &'a [u8]);

/// What a datatype becomes in MCAP: schema and message encoding.
fn mcap_encoding(dt: &DataTypeInformation) -> (Option<SchemaParts<'_>>, &'static str) {
    match dt.encoding.as_str() {
        "proto" if !dt.descriptor_information.is_empty() => {
            (Some((dt.name.as_str(), "protobuf", dt.descriptor_information.as_slice())), "protobuf")
        }
        "base" if dt.name == "std::string" => (None, TEXT_ENCODING),
        _ => (None, RAW_ENCODING),
    }
}

/// Whether messages of this datatype should wait for more (a protobuf topic registered without
/// its descriptor yet).
fn incomplete(dt: &DataTypeInformation) -> bool {
    dt.encoding == "proto" && dt.descriptor_information.is_empty()
}

impl FileWriter {
    fn run(&mut self, rx: Receiver<Event>) -> anyhow::Result<()> {
        let mut meta = BTreeMap::new();
        meta.insert("host".to_string(), self.opts.host.clone());
        meta.insert("recorder".to_string(), concat!("mwctl ", env!("CARGO_PKG_VERSION")).to_string());
        meta.insert("started_unix_ns".to_string(), unix_ns().to_string());
        self.out.write_metadata(&Metadata { name: "recording".into(), metadata: meta })?;
        let mut last_flush = Instant::now();
        let mut result = Ok(());
        loop {
            let ev = rx.recv_timeout(Duration::from_millis(100));
            let step = match ev {
                Ok(Event::Message(m)) => {
                    self.queued_bytes.fetch_sub(m.payload.len(), Ordering::Relaxed);
                    self.on_message(m)
                }
                Ok(Event::Datatype { topic, datatype }) => self.on_datatype(topic, datatype),
                Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => Ok(()),
            };
            let step = step.and_then(|()| self.expire_held(Instant::now(), false));
            let step = step.and_then(|()| {
                if last_flush.elapsed() >= FLUSH_EVERY {
                    last_flush = Instant::now();
                    self.out.flush()?;
                }
                Ok(())
            });
            if let Err(e) = step {
                self.failed(&e);
                result = Err(e);
                break;
            }
        }
        // What a receive thread may still send is refused from here on.
        drop(rx);
        result?;
        self.expire_held(Instant::now(), true)?;
        let mut meta = BTreeMap::new();
        for (topic, dt) in &self.datatypes {
            meta.insert(topic.clone(), format!("{}:{}", dt.encoding, dt.name));
        }
        self.out.write_metadata(&Metadata { name: "ecal.datatypes".into(), metadata: meta })?;
        self.out.finish().context("finishing the MCAP file")?;
        Ok(())
    }

    fn failed(&self, e: &anyhow::Error) {
        self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %format!("{e:#}"), file = %self.opts.path.display(), "writing the MCAP file failed");
    }

    fn channel(&mut self, topic: &str, dt: DataTypeInformation) -> anyhow::Result<u16> {
        let (schema, message_encoding) = mcap_encoding(&dt);
        let schema_id = match schema {
            Some((name, encoding, data)) => self.out.add_schema(name, encoding, data)?,
            None => 0,
        };
        let mut meta = BTreeMap::new();
        meta.insert(META_DATATYPE_NAME.to_string(), dt.name.clone());
        meta.insert(META_DATATYPE_ENCODING.to_string(), dt.encoding.clone());
        let id = self.out.add_channel(schema_id, topic, message_encoding, &meta)?;
        self.channels.insert(topic.to_string(), id);
        self.datatypes.insert(topic.to_string(), dt);
        self.counters.channels.fetch_add(1, Ordering::Relaxed);
        tracing::info!(topic, message_encoding, "recording channel");
        Ok(id)
    }

    fn write(&mut self, channel_id: u16, m: &Msg) -> anyhow::Result<()> {
        let header = MessageHeader {
            channel_id,
            sequence: m.sequence,
            log_time: m.log_time_ns,
            publish_time: m.publish_time_ns,
        };
        self.out.write_to_known_channel(&header, &m.payload)?;
        self.counters.messages.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes.fetch_add(m.payload.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn on_message(&mut self, m: Msg) -> anyhow::Result<()> {
        if let Some(&id) = self.channels.get(&m.topic) {
            return self.write(id, &m);
        }
        self.held_bytes += m.payload.len();
        match self.held.get_mut(&m.topic) {
            Some((_, v)) => v.push(m),
            None => {
                self.held_order.push_back(m.topic.clone());
                self.held.insert(m.topic.clone(), (Instant::now(), vec![m]));
            }
        }
        Ok(())
    }

    fn on_datatype(&mut self, topic: String, dt: DataTypeInformation) -> anyhow::Result<()> {
        if self.channels.contains_key(&topic) {
            // One channel per topic: a later datatype (another publisher) is noted only.
            if self.datatypes.get(&topic).is_some_and(|d| hash_of(d) != hash_of(&dt)) {
                tracing::warn!(%topic, datatype = %dt.name, "publishers of one topic announce different datatypes; the channel keeps the first");
            }
            return Ok(());
        }
        if incomplete(&dt) {
            return Ok(());
        }
        let id = self.channel(&topic, dt)?;
        self.release(&topic, id, false)
    }

    /// Writes the messages held for `topic` to channel `id`.
    fn release(&mut self, topic: &str, id: u16, fallback: bool) -> anyhow::Result<()> {
        let Some((_, msgs)) = self.held.remove(topic) else { return Ok(()) };
        self.held_bytes -= msgs.iter().map(|m| m.payload.len()).sum::<usize>();
        let counter = if fallback { &self.counters.schemaless_fallback } else { &self.counters.waited_for_schema };
        counter.fetch_add(msgs.len() as u64, Ordering::Relaxed);
        for m in &msgs {
            self.write(id, m)?;
        }
        Ok(())
    }

    /// Topics that waited too long (or all, or the oldest while over the byte bound) go to a
    /// schemaless channel.
    fn expire_held(&mut self, now: Instant, all: bool) -> anyhow::Result<()> {
        while let Some(topic) = self.held_order.front().cloned() {
            let Some(&(since, _)) = self.held.get(&topic) else {
                self.held_order.pop_front();
                continue;
            };
            if !(all || self.held_bytes > HELD_BYTES || now.duration_since(since) >= self.opts.schema_wait) {
                break;
            }
            self.held_order.pop_front();
            let n = self.held[&topic].1.len();
            tracing::warn!(
                %topic,
                messages = n,
                "no datatype heard for this topic in time: recorded as schemaless bytes"
            );
            let id = self.channel(&topic, DataTypeInformation::default())?;
            self.release(&topic, id, true)?;
        }
        Ok(())
    }
}

/// One channel of a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    /// The topic.
    pub topic: String,
    /// The eCAL datatype to announce when replaying.
    pub datatype: DataTypeInformation,
    /// Messages of this channel in the file.
    pub messages: u64,
}

/// Reads an MCAP file record by record with bounded memory (one chunk at a time), calling `f`
/// for each until it returns `false`. A file cut short (a recording killed outright) ends the
/// walk at its last complete record: returns `Ok(false)` then, `Ok(true)` otherwise.
///
/// # Errors
/// Unreadable file, or a record that does not parse.
pub fn for_each_record(
    path: &Path,
    mut f: impl FnMut(mcap::records::Record<'_>) -> anyhow::Result<bool>,
) -> anyhow::Result<bool> {
    use mcap::sans_io::linear_reader::{LinearReadEvent, LinearReader, LinearReaderOptions};
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = LinearReader::new_with_options(LinearReaderOptions::default().with_record_length_limit(1 << 30));
    while let Some(ev) = reader.next_event() {
        match ev {
            Ok(LinearReadEvent::ReadRequest(n)) => {
                let buf = reader.insert(n.max(64 << 10));
                let got = file.read(buf).with_context(|| format!("reading {}", path.display()))?;
                reader.notify_read(got);
            }
            Ok(LinearReadEvent::Record { data, opcode }) => {
                let record = mcap::parse_record(opcode, data)
                    .with_context(|| format!("{}: bad record (opcode {opcode:#x})", path.display()))?;
                if !f(record)? {
                    return Ok(true);
                }
            }
            Err(mcap::McapError::UnexpectedEof) => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    Ok(true)
}

/// The channels of a recording, by channel id, with their datatypes and message counts.
///
/// # Errors
/// As [`for_each_record`].
pub fn channels(path: &Path) -> anyhow::Result<(BTreeMap<u16, ChannelInfo>, bool)> {
    let mut schemas: HashMap<u16, (String, String, Vec<u8>)> = HashMap::new();
    let mut out = BTreeMap::new();
    let complete = for_each_record(path, |r| {
        match r {
            mcap::records::Record::Schema { header, data } => {
                schemas.insert(header.id, (header.name, header.encoding, data.into_owned()));
            }
            mcap::records::Record::Channel(c) => {
                let datatype = match (c.metadata.get(META_DATATYPE_NAME), c.metadata.get(META_DATATYPE_ENCODING)) {
                    (Some(name), Some(encoding)) => DataTypeInformation {
                        name: name.clone(),
                        encoding: encoding.clone(),
                        descriptor_information: schemas.get(&c.schema_id).map(|s| s.2.clone()).unwrap_or_default(),
                    },
                    // Another recorder's file: protobuf schemas map to eCAL's `proto`.
                    _ => match schemas.get(&c.schema_id) {
                        Some((name, enc, data)) if enc == "protobuf" => DataTypeInformation {
                            name: name.clone(),
                            encoding: "proto".into(),
                            descriptor_information: data.clone(),
                        },
                        _ => DataTypeInformation::default(),
                    },
                };
                out.entry(c.id).or_insert(ChannelInfo { topic: c.topic, datatype, messages: 0 });
            }
            mcap::records::Record::Message { header, .. } => {
                if let Some(c) = out.get_mut(&header.channel_id) {
                    c.messages += 1;
                }
            }
            _ => {}
        }
        Ok(true)
    })?;
    Ok((out, complete))
}

/// Whether `path` starts with the MCAP magic.
pub fn is_mcap(path: &Path) -> bool {
    let mut magic = [0u8; 8];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic[..] == mcap::MAGIC[..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("mwctl-mcap-{}-{name}.mcap", std::process::id()))
    }

    fn opts(path: &Path, wait: Duration) -> RecordOptions {
        RecordOptions {
            path: path.to_path_buf(),
            topics: vec![],
            compression: Compression::Zstd,
            schema_wait: wait,
            host: "testhost".into(),
        }
    }

    fn sample<'a>(topic: &'a str, clock: i64, payload: &'a [u8]) -> TappedSample<'a> {
        TappedSample {
            topic,
            publisher_id: 7,
            host_name: "h",
            clock,
            send_time_us: 1_000_000 + clock,
            payload,
            message_len: payload.len(),
            source: "10.0.0.1:5".parse().unwrap(),
        }
    }

    fn registration(topic: &str, dt: DataTypeInformation) -> Sample {
        Sample {
            cmd_type: CmdType::RegPublisher as i32,
            topic: Some(middleware::core::pb::Topic {
                topic_name: topic.into(),
                datatype_information: Some(dt),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn proto_dt() -> DataTypeInformation {
        DataTypeInformation { name: "pb.T".into(), encoding: "proto".into(), descriptor_information: vec![1, 2, 3] }
    }

    fn messages(path: &Path) -> Vec<(String, u32, Vec<u8>)> {
        let mut topics = HashMap::new();
        let mut out = Vec::new();
        assert!(for_each_record(path, |r| {
            match r {
                mcap::records::Record::Channel(c) => {
                    topics.insert(c.id, c.topic);
                }
                mcap::records::Record::Message { header, data } => {
                    out.push((topics[&header.channel_id].clone(), header.sequence, data.into_owned()))
                }
                _ => {}
            }
            Ok(true)
        })
        .unwrap());
        out
    }

    #[test]
    fn data_before_its_datatype_waits_then_gets_the_schema() {
        let path = tmp("wait");
        let rec = McapRecording::start(opts(&path, Duration::from_secs(30))).unwrap();
        let src = "10.0.0.1:5".parse().unwrap();
        rec.tap.data_sample(&sample("a", 1, b"one"));
        rec.tap.data_sample(&sample("a", 2, b"two"));
        rec.tap.registration(&registration("a", proto_dt()), src);
        rec.tap.data_sample(&sample("a", 3, b"three"));
        rec.tap.registration(&registration("r", DataTypeInformation::default()), src);
        rec.tap.data_sample(&sample("r", 1, b"raw"));
        let counters = Arc::clone(&rec.counters);
        rec.finish().unwrap();
        assert_eq!(counters.messages.load(Ordering::Relaxed), 4);
        assert_eq!(counters.waited_for_schema.load(Ordering::Relaxed), 2);
        assert_eq!(counters.schemaless_fallback.load(Ordering::Relaxed), 0);
        let (chans, complete) = channels(&path).unwrap();
        assert!(complete);
        let by_topic: HashMap<_, _> = chans.values().map(|c| (c.topic.as_str(), c)).collect();
        assert_eq!(by_topic["a"].datatype, proto_dt());
        assert_eq!(by_topic["a"].messages, 3);
        assert_eq!(by_topic["r"].messages, 1);
        let m = messages(&path);
        let a: Vec<_> = m.iter().filter(|x| x.0 == "a").map(|x| (x.1, x.2.clone())).collect();
        assert_eq!(a, vec![(1, b"one".to_vec()), (2, b"two".to_vec()), (3, b"three".to_vec())]);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_datatype_that_never_comes_means_a_counted_schemaless_channel() {
        let path = tmp("fallback");
        let rec = McapRecording::start(opts(&path, Duration::from_millis(200))).unwrap();
        rec.tap.data_sample(&sample("lonely", 1, b"x"));
        std::thread::sleep(Duration::from_millis(600));
        // Its datatype arrives late: the channel stays schemaless, later data goes there too.
        rec.tap.registration(&registration("lonely", proto_dt()), "10.0.0.1:5".parse().unwrap());
        rec.tap.data_sample(&sample("lonely", 2, b"y"));
        let counters = Arc::clone(&rec.counters);
        rec.finish().unwrap();
        assert_eq!(counters.schemaless_fallback.load(Ordering::Relaxed), 1);
        assert_eq!(counters.messages.load(Ordering::Relaxed), 2);
        let (chans, _) = channels(&path).unwrap();
        assert_eq!(chans.len(), 1);
        let c = chans.values().next().unwrap();
        assert_eq!((c.datatype.clone(), c.messages), (DataTypeInformation::default(), 2));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_file_cut_short_reads_up_to_its_last_complete_chunk() {
        let path = tmp("cut");
        let rec = McapRecording::start(opts(&path, Duration::from_secs(30))).unwrap();
        rec.tap.registration(&registration("t", DataTypeInformation::default()), "10.0.0.1:5".parse().unwrap());
        for k in 0..50 {
            rec.tap.data_sample(&sample("t", k, &vec![k as u8; 1000]));
        }
        // The writer ends a chunk each second.
        std::thread::sleep(FLUSH_EVERY + Duration::from_millis(500));
        let flushed = std::fs::read(&path).unwrap();
        rec.finish().unwrap();
        let cut = tmp("cut-copy");
        std::fs::write(&cut, &flushed).unwrap();
        let mut seen = 0;
        let complete = for_each_record(&cut, |r| {
            if let mcap::records::Record::Message { header, data } = r {
                assert_eq!(data.as_ref(), &vec![header.sequence as u8; 1000][..]);
                seen += 1;
            }
            Ok(true)
        })
        .unwrap();
        assert!(!complete, "a file without its end must read as cut short");
        assert_eq!(seen, 50);
        // Truncated in the middle of a record: still the complete part, no panic.
        std::fs::write(&cut, &flushed[..flushed.len() - 7]).unwrap();
        assert!(!for_each_record(&cut, |_| Ok(true)).unwrap());
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(cut);
    }

    #[test]
    fn the_queue_is_bounded_in_bytes() {
        let (tx, rx) = sync_channel(QUEUE_MESSAGES);
        let tap = McapTap {
            topics: HashSet::new(),
            tx,
            queued_bytes: Arc::default(),
            counters: Arc::default(),
            sent_datatypes: Mutex::default(),
        };
        let big = vec![0u8; 1 << 20];
        for k in 0..300 {
            tap.data_sample(&sample("big", k, &big));
        }
        let queued = rx.try_iter().count();
        assert_eq!(queued, QUEUE_BYTES >> 20);
        assert_eq!(tap.counters.queue_dropped.load(Ordering::Relaxed), 300 - queued as u64);
    }
}
