//! `mwctl replay FILE`: re-publishes the data samples of a recording (pcapng or pcap, any link
//! type the capture transport decodes), with their original spacing or faster, under the
//! datatypes the recording's registration announced.

use crate::Ctx;
use anyhow::Context;
use middleware::core::fragment::{Outcome, Reassembler};
use middleware::core::pb::{CmdType, DataTypeInformation, Sample};
use middleware::core::wire::SampleFrame;
use middleware::core::{Publisher, Raw};
use middleware::npcap::demux::Demux;
use middleware::npcap::frame::LinkType;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Recording to replay (MCAP, pcapng or pcap).
    file: PathBuf,
    /// Replay only these topics (repeatable).
    #[arg(long)]
    topic: Vec<String>,
    /// Speed factor: 1 = recorded pace, 2 = twice as fast, 0 = as fast as possible.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Seconds to wait for a subscriber of every replayed topic before starting.
    #[arg(long, default_value_t = 10.0)]
    wait_subscriber: f64,
    /// Registration port and data port of the recording.
    #[arg(long, default_value_t = 14000)]
    registration_port: u16,
    #[arg(long, default_value_t = 14002)]
    data_port: u16,
}

/// One data sample found in a recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub topic: String,
    pub timestamp_us: i64,
    pub payload: Vec<u8>,
}

/// What a recording holds: the samples in order and the datatypes announced for each topic.
#[derive(Debug, Default)]
pub struct Recording {
    pub samples: Vec<Recorded>,
    pub datatypes: HashMap<String, DataTypeInformation>,
    /// Packets that were not eCAL traffic or did not decode.
    pub skipped: u64,
}

/// Decodes a recording into samples.
///
/// # Errors
/// Unreadable file.
pub fn load(path: &std::path::Path, ports: (u16, u16)) -> anyhow::Result<Recording> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut rec = Recording::default();
    let mut demuxes: HashMap<(String, u16), Demux> = HashMap::new();
    let mut reassembly: BTreeMap<u16, Reassembler> = BTreeMap::new();
    let base = Instant::now();
    let mut t0: Option<i64> = None;
    crate::pcapng::read_packets(f, |p| {
        let Some(link) = LinkType::from_dlt(i32::from(p.link_type)) else {
            rec.skipped += 1;
            return Ok(());
        };
        // Time as recorded drives IP and message reassembly timeouts.
        let t0 = *t0.get_or_insert(p.timestamp_us);
        let now = base + Duration::from_micros((p.timestamp_us - t0).max(0) as u64);
        let demux =
            demuxes.entry((p.interface.clone(), p.link_type)).or_insert_with(|| Demux::new(link, Default::default()));
        let mut datagrams = Vec::new();
        demux.on_frame(
            now,
            &p.data,
            |d| d.port() == ports.0 || d.port() == ports.1,
            |d| datagrams.push((d.source, d.destination.port(), d.payload.to_vec())),
        );
        if datagrams.is_empty() {
            rec.skipped += 1;
        }
        for (source, port, payload) in datagrams {
            let r = reassembly.entry(port).or_insert_with(|| Reassembler::new(Default::default()));
            let Outcome::Message(m) = r.on_datagram(now, source, &payload) else { continue };
            let Ok(frame) = SampleFrame::new_checked(&m) else {
                rec.skipped += 1;
                continue;
            };
            let Ok(s) = Sample::decode(frame.body()) else {
                rec.skipped += 1;
                continue;
            };
            let topic = s.topic.unwrap_or_default();
            if port == ports.0 {
                if s.cmd_type == CmdType::RegPublisher as i32 {
                    if let Some(dt) = topic.datatype_information {
                        rec.datatypes.insert(topic.topic_name, dt);
                    }
                }
            } else if s.cmd_type == CmdType::SetSample as i32 {
                rec.samples.push(Recorded {
                    topic: topic.topic_name,
                    timestamp_us: p.timestamp_us,
                    payload: s.content.map(|c| c.payload.to_vec()).unwrap_or_default(),
                });
            }
        }
        Ok(())
    })
    .with_context(|| format!("reading {}", path.display()))?;
    Ok(rec)
}

pub fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<i32> {
    if crate::mcapfile::is_mcap(&args.file) {
        return run_mcap(ctx, args);
    }
    let mut rec = load(&args.file, (args.registration_port, args.data_port))?;
    if !args.topic.is_empty() {
        rec.samples.retain(|s| args.topic.contains(&s.topic));
    }
    anyhow::ensure!(!rec.samples.is_empty(), "{} holds no data samples to replay", args.file.display());
    let mut pubs: BTreeMap<String, Publisher<Raw>> = BTreeMap::new();
    for s in &rec.samples {
        if !pubs.contains_key(&s.topic) {
            let dt = rec.datatypes.get(&s.topic).cloned().unwrap_or_default();
            pubs.insert(s.topic.clone(), ctx.node.publisher_with_datatype::<Raw>(&s.topic, dt)?);
        }
    }
    eprintln!("replaying {} samples of {} topics from {}", rec.samples.len(), pubs.len(), args.file.display());
    let deadline = Instant::now() + Duration::from_secs_f64(args.wait_subscriber.max(0.0));
    for (t, p) in &pubs {
        if !p.wait_for_subscriber(deadline.saturating_duration_since(Instant::now())) {
            eprintln!("warning: no subscriber of {t}; its samples are not sent (eCAL semantics)");
        }
    }
    let start = Instant::now();
    let t0 = rec.samples[0].timestamp_us;
    let mut sent: BTreeMap<&str, u64> = BTreeMap::new();
    let mut not_sent = 0u64;
    for s in &rec.samples {
        if middleware::cli::stopping() {
            break;
        }
        if args.speed > 0.0 {
            let at = Duration::from_secs_f64((s.timestamp_us - t0).max(0) as f64 / 1e6 / args.speed);
            crate::sleep_until(start + at);
        }
        if pubs[&s.topic].send(&s.payload)? {
            *sent.entry(&s.topic).or_default() += 1;
        } else {
            not_sent += 1;
        }
    }
    // Let the last messages leave before unregistering.
    std::thread::sleep(Duration::from_millis(300));
    println!("{}", serde_json::json!({"sent": sent, "not_sent": not_sent, "skipped_packets": rec.skipped}));
    Ok(if not_sent > 0 { 1 } else { 0 })
}

/// Replays an MCAP file: a publisher per topic with the datatype recorded for it, messages at
/// their recorded pace (log time), read chunk by chunk.
fn run_mcap(ctx: &Ctx, args: &Args) -> anyhow::Result<i32> {
    let (channels, complete) = crate::mcapfile::channels(&args.file)?;
    if !complete {
        eprintln!("warning: {} ends early (recording killed?); replaying what it holds", args.file.display());
    }
    let mut pubs: BTreeMap<String, Publisher<Raw>> = BTreeMap::new();
    let mut by_channel: HashMap<u16, String> = HashMap::new();
    let mut total = 0u64;
    for (id, c) in &channels {
        if !args.topic.is_empty() && !args.topic.contains(&c.topic) {
            continue;
        }
        if !pubs.contains_key(&c.topic) {
            pubs.insert(c.topic.clone(), ctx.node.publisher_with_datatype::<Raw>(&c.topic, c.datatype.clone())?);
        }
        by_channel.insert(*id, c.topic.clone());
        total += c.messages;
    }
    anyhow::ensure!(total > 0, "{} holds no messages to replay", args.file.display());
    eprintln!("replaying {total} messages of {} topics from {}", pubs.len(), args.file.display());
    let deadline = Instant::now() + Duration::from_secs_f64(args.wait_subscriber.max(0.0));
    for (t, p) in &pubs {
        if !p.wait_for_subscriber(deadline.saturating_duration_since(Instant::now())) {
            eprintln!("warning: no subscriber of {t}; its messages are not sent (eCAL semantics)");
        }
    }
    let start = Instant::now();
    let mut t0: Option<u64> = None;
    let mut sent: BTreeMap<String, u64> = BTreeMap::new();
    let mut not_sent = 0u64;
    let mut error = None;
    crate::mcapfile::for_each_record(&args.file, |r| {
        let mcap::records::Record::Message { header, data } = r else { return Ok(true) };
        let Some(topic) = by_channel.get(&header.channel_id) else { return Ok(true) };
        if middleware::cli::stopping() {
            return Ok(false);
        }
        let t0 = *t0.get_or_insert(header.log_time);
        if args.speed > 0.0 {
            let at = Duration::from_secs_f64(header.log_time.saturating_sub(t0) as f64 / 1e9 / args.speed);
            crate::sleep_until(start + at);
        }
        match pubs[topic].send(&data) {
            Ok(true) => *sent.entry(topic.clone()).or_default() += 1,
            Ok(false) => not_sent += 1,
            Err(e) => {
                error = Some(e);
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    if let Some(e) = error {
        return Err(e.into());
    }
    // Let the last messages leave before unregistering.
    std::thread::sleep(Duration::from_millis(300));
    println!("{}", serde_json::json!({"sent": sent, "not_sent": not_sent, "complete_file": complete}));
    Ok(if not_sent > 0 { 1 } else { 0 })
}
