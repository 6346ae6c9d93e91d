//! `mwctl record`: eCAL registration and data traffic to a pcapng file. With the packet capture
//! transport the frames are written as captured; with sockets, Ethernet/IPv4/UDP frames are
//! synthesized around each received datagram (destination: the configured group or broadcast
//! address and the channel's port).
//!
//! eCAL publishers send only while a subscriber is connected, so the recorder subscribes to the
//! recorded topics (every published topic it hears of, or those given with `--topic`) and
//! discards what it receives: only the tap writes.

use crate::pcapng::{Writer, LINKTYPE_ETHERNET};
use crate::Ctx;
use anyhow::Context;
use middleware::core::pb::Sample;
use middleware::core::registration::Direction;
use middleware::core::transport::Channel;
use middleware::core::wire::{Datagram, DatagramKind, SampleFrame};
use middleware::core::{Raw, Subscriber, Tap, TappedSample};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufWriter, IsTerminal};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Datagrams of messages whose first fragment has not arrived yet, held at most (bytes).
const MAX_PENDING_BYTES: usize = 16 << 20;
/// Message decisions (keep / drop) remembered at most.
const MAX_DECIDED: usize = 4096;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output file: `.mcap` records the data of each topic with its schema (Foxglove, the MCAP
    /// tools, `mwctl replay`); any other name records the traffic as pcapng (Wireshark, tcpdump).
    #[arg(long)]
    pub out: PathBuf,
    /// File format, overriding the extension of --out.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Chunk compression of MCAP files.
    #[arg(long, value_enum, default_value = "zstd")]
    pub compression: crate::mcapfile::Compression,
    /// MCAP: seconds a topic's messages wait for its datatype (its publisher's registration)
    /// before they are recorded as schemaless bytes.
    #[arg(long, default_value_t = 3.0)]
    pub schema_wait: f64,
    /// Record only these topics (repeatable); default: every published topic heard of.
    #[arg(long)]
    pub topic: Vec<String>,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    seconds: Option<f64>,
    /// Stop after this many data samples.
    #[arg(long)]
    samples: Option<u64>,
}

/// What `record` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// MCAP: messages per topic, with protobuf schemas.
    Mcap,
    /// pcapng: the packets as on the wire.
    Pcapng,
}

impl Args {
    /// The format asked for, or the one the file name implies.
    pub fn format(&self) -> Format {
        self.format.unwrap_or_else(|| {
            if self.out.extension().is_some_and(|e| e.eq_ignore_ascii_case("mcap")) {
                Format::Mcap
            } else {
                Format::Pcapng
            }
        })
    }
}

/// Counters printed at the end.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Totals {
    pub packets: u64,
    pub bytes: u64,
    pub registration_datagrams: u64,
    pub data_datagrams: u64,
    /// Data samples of recorded topics (decoded by the node).
    pub data_samples: u64,
    /// Datagrams left out by the topic filter.
    pub filtered_out: u64,
    /// Datagrams dropped because their message's first fragment never came in time.
    pub undecided_dropped: u64,
    pub write_errors: u64,
}

/// Keeps or drops data datagrams by topic: the topic is in the first fragment, so the others
/// wait (bounded) for it.
#[derive(Default)]
struct TopicFilter {
    topics: HashSet<String>,
    decided: HashMap<(SocketAddr, i32), bool>,
    order: VecDeque<(SocketAddr, i32)>,
    pending: HashMap<(SocketAddr, i32), Vec<Vec<u8>>>,
    pending_order: VecDeque<(SocketAddr, i32)>,
    pending_bytes: usize,
}

enum Decision {
    Keep(Vec<Vec<u8>>),
    Drop(u64),
    Wait,
}

impl TopicFilter {
    fn wanted(&self, name: &str) -> bool {
        self.topics.is_empty() || self.topics.contains(name)
    }

    fn decide(&mut self, key: (SocketAddr, i32), keep: bool) {
        if self.decided.insert(key, keep).is_none() {
            self.order.push_back(key);
            if self.order.len() > MAX_DECIDED {
                if let Some(old) = self.order.pop_front() {
                    self.decided.remove(&old);
                }
            }
        }
    }

    /// What to do with one data datagram; `evicted` counts pending datagrams dropped for room.
    fn on_datagram(&mut self, source: SocketAddr, bytes: &[u8], evicted: &mut u64) -> Decision {
        if self.topics.is_empty() {
            return Decision::Keep(vec![bytes.to_vec()]);
        }
        let Ok(d) = Datagram::new_checked(bytes) else { return Decision::Drop(1) };
        let key = (source, d.id());
        let name_keep = |body: &[u8], f: &Self| SampleFrame::new_checked(body).ok().map(|fr| f.wanted(fr.name()));
        match d.kind() {
            DatagramKind::Whole => match name_keep(d.body(), self) {
                Some(true) => Decision::Keep(vec![bytes.to_vec()]),
                _ => Decision::Drop(1),
            },
            DatagramKind::Fragment if d.num() == 0 => {
                let keep = name_keep(d.body(), self).unwrap_or(false);
                self.decide(key, keep);
                let mut held = self.pending.remove(&key).unwrap_or_default();
                self.pending_bytes -= held.iter().map(Vec::len).sum::<usize>();
                held.push(bytes.to_vec());
                if keep {
                    Decision::Keep(held)
                } else {
                    Decision::Drop(held.len() as u64)
                }
            }
            DatagramKind::FragmentInfo | DatagramKind::Fragment => match self.decided.get(&key) {
                Some(true) => Decision::Keep(vec![bytes.to_vec()]),
                Some(false) => Decision::Drop(1),
                None => {
                    let held = self.pending.entry(key).or_default();
                    let first = held.is_empty();
                    held.push(bytes.to_vec());
                    self.pending_bytes += bytes.len();
                    if first {
                        self.pending_order.push_back(key);
                        // Keys decided since are stale: drop them so the order list stays bounded.
                        while self.pending_order.front().is_some_and(|k| !self.pending.contains_key(k)) {
                            self.pending_order.pop_front();
                        }
                        // Mostly stale entries left (one stuck key at the front): compact, which
                        // at least halves the list, so the cost per datagram stays constant.
                        if self.pending_order.len() > 2 * self.pending.len() + MAX_DECIDED {
                            let pending = &self.pending;
                            self.pending_order.retain(|k| pending.contains_key(k));
                        }
                    }
                    while self.pending_bytes > MAX_PENDING_BYTES {
                        let Some(old) = self.pending_order.pop_front() else { break };
                        if let Some(v) = self.pending.remove(&old) {
                            self.pending_bytes -= v.iter().map(Vec::len).sum::<usize>();
                            *evicted += v.len() as u64;
                        }
                    }
                    Decision::Wait
                }
            },
            DatagramKind::Unknown(_) => Decision::Drop(1),
        }
    }
}

/// The tap that writes the file.
pub struct Recorder {
    writer: Mutex<Option<Writer<BufWriter<std::fs::File>>>>,
    filter: Mutex<TopicFilter>,
    totals: Mutex<Totals>,
    /// Frames come from the capture: the datagram tap then only counts.
    raw: AtomicBool,
    destination: Ipv4Addr,
    ports: (u16, u16),
    ttl: u8,
    ip_id: std::sync::atomic::AtomicU16,
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

impl Recorder {
    /// # Errors
    /// The file cannot be created.
    pub fn create(
        path: &std::path::Path,
        topics: &[String],
        config: &middleware::core::Config,
    ) -> anyhow::Result<Self> {
        let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let w = Writer::new(BufWriter::with_capacity(1 << 20, f), concat!("mwctl ", env!("CARGO_PKG_VERSION")))?;
        Ok(Self {
            writer: Mutex::new(Some(w)),
            filter: Mutex::new(TopicFilter { topics: topics.iter().cloned().collect(), ..Default::default() }),
            totals: Mutex::new(Totals::default()),
            raw: AtomicBool::new(false),
            destination: config.destination(),
            ports: (config.registration_port(), config.data_port()),
            ttl: config.ttl().min(255) as u8,
            ip_id: Default::default(),
        })
    }

    fn write(&self, interface: &str, link: u16, ts: i64, original_len: u32, data: &[u8]) {
        let mut w = self.writer.lock().expect("poisoned");
        let Some(w) = w.as_mut() else { return };
        let r = w.interface(interface, link).and_then(|i| w.packet(i, ts, original_len, data));
        let mut t = self.totals.lock().expect("poisoned");
        match r {
            Ok(()) => {
                t.packets += 1;
                t.bytes += data.len() as u64;
            }
            Err(e) => {
                t.write_errors += 1;
                if t.write_errors == 1 {
                    tracing::error!(error = %e, "writing the capture file failed");
                }
            }
        }
    }

    /// A frame as captured by the packet capture transport.
    pub fn on_frame(&self, f: &middleware::npcap::CapturedFrame<'_>) {
        self.raw.store(true, Ordering::Relaxed);
        self.write(f.device, f.link_type as u16, f.timestamp_us, f.original_len, f.data);
    }

    fn synthesize(&self, source: SocketAddr, port: u16, payload: &[u8]) -> Option<Vec<u8>> {
        let SocketAddr::V4(src) = source else { return None };
        let dst = self.destination;
        let dst_mac = if dst.is_multicast() {
            let o = dst.octets();
            [0x01, 0x00, 0x5e, o[1] & 0x7f, o[2], o[3]]
        } else {
            [0xff; 6]
        };
        // Locally administered source address derived from the sender's IPv4 address.
        let s = src.ip().octets();
        let src_mac = [0x02, 0x00, s[0], s[1], s[2], s[3]];
        let builder = etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
            .ipv4(s, dst.octets(), self.ttl)
            .udp(src.port(), port);
        let mut out = Vec::with_capacity(builder.size(payload.len()));
        builder.write(&mut out, payload).ok()?;
        // Identification: distinct per packet, as a sender's stack would set it.
        let id = self.ip_id.fetch_add(1, Ordering::Relaxed);
        out[18..20].copy_from_slice(&id.to_be_bytes());
        let sum = ipv4_checksum(&out[14..34]);
        out[24..26].copy_from_slice(&sum.to_be_bytes());
        Some(out)
    }

    pub fn totals(&self) -> Totals {
        self.totals.lock().expect("poisoned").clone()
    }

    /// Flushes and closes the file.
    ///
    /// # Errors
    /// Flush failure.
    pub fn finish(&self) -> anyhow::Result<()> {
        if let Some(mut w) = self.writer.lock().expect("poisoned").take() {
            w.flush()?;
        }
        Ok(())
    }
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum = 0u32;
    for (i, c) in header.chunks(2).enumerate() {
        if i == 5 {
            continue; // the checksum field itself
        }
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl Tap for Recorder {
    fn datagram(&self, channel: Channel, source: SocketAddr, bytes: &[u8]) {
        let (port, data) = match channel {
            Channel::Registration => (self.ports.0, false),
            Channel::Data => (self.ports.1, true),
        };
        {
            let mut t = self.totals.lock().expect("poisoned");
            if data {
                t.data_datagrams += 1;
            } else {
                t.registration_datagrams += 1;
            }
        }
        if self.raw.load(Ordering::Relaxed) {
            return;
        }
        let keep = if data {
            let mut evicted = 0;
            let d = self.filter.lock().expect("poisoned").on_datagram(source, bytes, &mut evicted);
            let mut t = self.totals.lock().expect("poisoned");
            t.undecided_dropped += evicted;
            match d {
                Decision::Keep(v) => v,
                Decision::Drop(n) => {
                    t.filtered_out += n;
                    return;
                }
                Decision::Wait => return,
            }
        } else {
            vec![bytes.to_vec()]
        };
        let ts = now_us();
        for dgram in keep {
            if let Some(frame) = self.synthesize(source, port, &dgram) {
                self.write("synthesized", LINKTYPE_ETHERNET, ts, frame.len() as u32, &frame);
            }
        }
    }

    fn data_sample(&self, s: &TappedSample<'_>) {
        if self.filter.lock().expect("poisoned").wanted(s.topic) {
            self.totals.lock().expect("poisoned").data_samples += 1;
        }
    }

    fn registration(&self, _sample: &Sample, _source: SocketAddr) {}
}

/// Subscribes to the recorded topics (so that publishers send them) until the recording is to
/// stop, printing `progress()` each second; `samples()` counts what has been recorded.
pub fn drive(ctx: &Ctx, args: &Args, progress: &dyn Fn() -> String, samples: &dyn Fn() -> u64) {
    let start = Instant::now();
    let mut subs: HashMap<String, Subscriber<Raw>> = HashMap::new();
    let tty = std::io::stderr().is_terminal();
    let mut last_progress = Instant::now();
    loop {
        // Subscribe to what is to be recorded, so publishers send it.
        let wanted: Vec<String> = if args.topic.is_empty() {
            ctx.node
                .remote_entities()
                .into_iter()
                .filter(|e| e.direction == Direction::Publisher)
                .map(|e| e.topic_name)
                .collect()
        } else {
            args.topic.clone()
        };
        for t in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = subs.entry(t) {
                match ctx.node.subscriber::<Raw>(slot.key()) {
                    Ok(s) => {
                        // Discard at once: the tap has already taken the data.
                        s.on_receive(|_| {});
                        tracing::info!(topic = %slot.key(), "recording topic");
                        slot.insert(s);
                    }
                    Err(e) => tracing::warn!(topic = %slot.key(), error = %e, "cannot subscribe"),
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        let elapsed = start.elapsed().as_secs_f64();
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            let total = args.seconds.map(|s| format!("/{s:.0}")).unwrap_or_default();
            let line = format!("{elapsed:5.1}{total} s  {}  {} topics", progress(), subs.len());
            if tty {
                eprint!("\r{line}   ");
            } else {
                eprintln!("{line}");
            }
        }
        if middleware::cli::stopping()
            || args.seconds.is_some_and(|s| elapsed >= s)
            || args.samples.is_some_and(|n| samples() >= n)
        {
            break;
        }
    }
    if tty {
        eprintln!();
    }
}

fn announce(ctx: &Ctx, args: &Args, what: &str) {
    eprintln!(
        "recording to {} ({}; {what}){}",
        args.out.display(),
        ctx.transport,
        args.seconds.map(|s| format!(" for {s} s")).unwrap_or_else(|| ", Ctrl-C to stop".into())
    );
}

/// Records pcapng.
pub fn run(ctx: &Ctx, rec: &Arc<Recorder>, args: &Args) -> anyhow::Result<i32> {
    let how =
        if ctx.transport.starts_with("npcap") { "frames as captured" } else { "frames synthesized around datagrams" };
    announce(ctx, args, how);
    let progress = || {
        let t = rec.totals();
        format!(
            "{} packets  {}  {} data samples",
            t.packets,
            crate::monitor::human_rate(t.bytes as f64).trim_end_matches("/s"),
            t.data_samples
        )
    };
    drive(ctx, args, &progress, &|| rec.totals().data_samples);
    rec.finish()?;
    let t = rec.totals();
    println!("{}", serde_json::to_string(&serde_json::json!({"file": args.out, "totals": t}))?);
    if t.write_errors > 0 {
        anyhow::bail!("{} packets could not be written to {}", t.write_errors, args.out.display());
    }
    Ok(0)
}

/// Records MCAP: opens the node with the recording's tap, records, then closes the node and
/// finishes the file (summary and index).
pub fn run_mcap(common: &middleware::cli::CommonArgs, args: &Args) -> anyhow::Result<i32> {
    use crate::mcapfile::{McapRecording, RecordOptions};
    anyhow::ensure!(args.schema_wait >= 0.0, "--schema-wait must not be negative");
    let rec = McapRecording::start(RecordOptions {
        path: args.out.clone(),
        topics: args.topic.clone(),
        compression: args.compression,
        schema_wait: Duration::from_secs_f64(args.schema_wait),
        host: gethostname::gethostname().to_string_lossy().into_owned(),
    })?;
    let counters = Arc::clone(&rec.counters);
    let taps = middleware::Taps { node: Some(Arc::clone(&rec.tap) as Arc<dyn Tap>), frames: None };
    let ctx = crate::open(common, &taps)?;
    announce(&ctx, args, "MCAP, one channel per topic");
    let c = Arc::clone(&counters);
    let progress = move || {
        format!(
            "{} messages  {}  {} channels",
            c.messages.load(Ordering::Relaxed),
            crate::monitor::human_rate(c.bytes.load(Ordering::Relaxed) as f64).trim_end_matches("/s"),
            c.channels.load(Ordering::Relaxed)
        )
    };
    let c2 = Arc::clone(&counters);
    // What has been handed to the writer counts as recorded (queued or written).
    drive(&ctx, args, &progress, &|| c2.messages.load(Ordering::Relaxed));
    drop(ctx);
    let finished = rec.finish();
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let totals = serde_json::json!({
        "messages": get(&counters.messages),
        "bytes": get(&counters.bytes),
        "channels": get(&counters.channels),
        "queue_dropped": get(&counters.queue_dropped),
        "waited_for_schema": get(&counters.waited_for_schema),
        "schemaless_fallback": get(&counters.schemaless_fallback),
        "topics_untracked": get(&counters.topics_untracked),
        "write_errors": get(&counters.write_errors),
    });
    println!("{}", serde_json::to_string(&serde_json::json!({"file": args.out, "format": "mcap", "totals": totals}))?);
    finished?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use middleware::core::fragment::split;
    use middleware::core::wire::SampleFrameRepr;

    fn message(topic: &str, len: usize) -> Vec<u8> {
        let mut m = Vec::new();
        SampleFrameRepr { name: topic }.emit_prefix(&mut m);
        m.resize(m.len() + len, 7);
        m
    }

    fn datagrams(topic: &str, len: usize, id: i32) -> Vec<Vec<u8>> {
        let m = message(topic, len);
        split(&m, 1000, id).unwrap().map(|p| [&p.header[..], p.body].concat()).collect()
    }

    #[test]
    fn filter_keeps_whole_messages_of_wanted_topics_only() {
        let mut f = TopicFilter { topics: ["a".to_string()].into_iter().collect(), ..Default::default() };
        let src: SocketAddr = "10.0.0.1:5".parse().unwrap();
        let mut ev = 0;
        let (mut kept, mut dropped) = (0u64, 0u64);
        for (topic, id) in [("a", 1), ("b", 2), ("a", 3)] {
            let mut d = datagrams(topic, 3500, id);
            // Info datagram first, then fragment 1 before fragment 0: must wait, then follow.
            d.swap(1, 2);
            for x in &d {
                match f.on_datagram(src, x, &mut ev) {
                    Decision::Keep(v) => kept += v.len() as u64,
                    Decision::Drop(n) => dropped += n,
                    Decision::Wait => {}
                }
            }
        }
        let per = datagrams("a", 3500, 1).len() as u64;
        assert_eq!((kept, dropped, ev), (2 * per, per, 0));
        assert_eq!(f.pending_bytes, 0);
        // Small messages: one datagram each.
        assert!(matches!(f.on_datagram(src, &datagrams("a", 10, 9)[0], &mut ev), Decision::Keep(_)));
        assert!(matches!(f.on_datagram(src, &datagrams("c", 10, 9)[0], &mut ev), Decision::Drop(1)));
        assert!(matches!(f.on_datagram(src, b"garbage", &mut ev), Decision::Drop(1)));
    }

    #[test]
    fn bookkeeping_stays_bounded_over_a_long_recording() {
        let mut f = TopicFilter { topics: ["a".to_string()].into_iter().collect(), ..Default::default() };
        let src: SocketAddr = "10.0.0.1:5".parse().unwrap();
        let mut ev = 0;
        let mut kept = 0u64;
        // A message whose first fragment never comes stays at the front of the order list.
        assert!(matches!(f.on_datagram(src, &datagrams("a", 1500, -1)[0], &mut ev), Decision::Wait));
        for id in 0..20_000 {
            // Info datagram (waits), then fragments 0 and 1 (decided).
            for d in datagrams(if id % 2 == 0 { "a" } else { "b" }, 1500, id) {
                if let Decision::Keep(v) = f.on_datagram(src, &d, &mut ev) {
                    kept += v.len() as u64;
                }
            }
        }
        assert_eq!(kept, 10_000 * 3);
        assert!(f.pending.len() == 1 && ev == 0);
        assert!(f.pending_order.len() <= 2 + MAX_DECIDED + 1, "{}", f.pending_order.len());
        assert!(f.decided.len() <= MAX_DECIDED);
    }

    #[test]
    fn undecided_fragments_are_bounded() {
        let mut f = TopicFilter { topics: ["a".to_string()].into_iter().collect(), ..Default::default() };
        let src: SocketAddr = "10.0.0.1:5".parse().unwrap();
        let mut ev = 0;
        for id in 0..40_000 {
            let d = datagrams("a", 1500, id);
            // Never the first fragment.
            f.on_datagram(src, &d[2], &mut ev);
        }
        assert!(f.pending_bytes <= MAX_PENDING_BYTES);
        assert!(ev > 0);
    }

    #[test]
    fn synthesized_frames_decode_back() {
        let cfg = middleware::core::Config::default();
        let path = std::env::temp_dir().join(format!("mwctl-test-{}.pcapng", std::process::id()));
        let r = Recorder::create(&path, &[], &cfg).unwrap();
        let payload = datagrams("t", 10, 1).remove(0);
        let frame = r.synthesize("127.0.0.1:40000".parse().unwrap(), 14002, &payload).unwrap();
        let p = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else { panic!("not ipv4") };
        assert_eq!(ip.header().destination_addr(), Ipv4Addr::new(127, 255, 255, 255));
        assert_eq!(ip.header().to_header().calc_header_checksum(), ip.header().header_checksum());
        let Some(etherparse::TransportSlice::Udp(u)) = p.transport else { panic!("not udp") };
        assert_eq!((u.source_port(), u.destination_port()), (40000, 14002));
        assert_eq!(u.payload(), &payload[..]);
        r.finish().unwrap();
        let _ = std::fs::remove_file(path);
    }
}
