//! `mwctl monitor`: processes, publishers and subscribers heard through registration, and
//! per-topic traffic measured from the data the node receives (plus what publishers and
//! subscribers report about themselves in registration).

use crate::Ctx;
use middleware::core::registration::{Direction, RemoteEntity, RemoteProcess};
use middleware::core::{Tap, TappedSample};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Topics tracked at most (names come from the network).
const MAX_TOPICS: usize = 4096;
/// Publishers whose clock is tracked at most (for gap counting).
const MAX_CLOCKS: usize = 16_384;
/// Rate history points per topic (the graph).
const HISTORY: usize = 24;

#[derive(Debug, Default, Clone)]
struct Traffic {
    messages: u64,
    bytes: u64,
    gaps: u64,
}

/// Clocks a publisher skipped between `last` and `clock` (clocks come from the network: any
/// i64, so the arithmetic is done wide and saturates).
fn clock_gap(last: Option<i64>, clock: i64) -> u64 {
    match last {
        Some(last) => (i128::from(clock) - i128::from(last) - 1).clamp(0, i128::from(u64::MAX)) as u64,
        None => 0,
    }
}

/// Messages sent between two registered clocks of a publisher (0 when it went backwards).
fn clock_advance(before: i64, now: i64) -> u64 {
    (i128::from(now) - i128::from(before)).clamp(0, i128::from(u64::MAX)) as u64
}

/// Counts the data samples a node sees, per topic.
#[derive(Debug, Default)]
pub struct TrafficTap {
    state: Mutex<TapState>,
}

#[derive(Debug, Default)]
struct TapState {
    topics: HashMap<String, Traffic>,
    clocks: HashMap<u64, i64>,
    /// Samples of topics not tracked because the table was full.
    untracked: u64,
}

impl Tap for TrafficTap {
    fn data_sample(&self, s: &TappedSample<'_>) {
        let mut st = self.state.lock().expect("poisoned");
        let gap = clock_gap(st.clocks.get(&s.publisher_id).copied(), s.clock);
        if st.clocks.len() < MAX_CLOCKS || st.clocks.contains_key(&s.publisher_id) {
            let e = st.clocks.entry(s.publisher_id).or_insert(s.clock);
            *e = (*e).max(s.clock);
        }
        // Known topics are found without allocating a key.
        if !st.topics.contains_key(s.topic) {
            if st.topics.len() >= MAX_TOPICS {
                st.untracked += 1;
                return;
            }
            st.topics.insert(s.topic.to_string(), Traffic::default());
        }
        let t = st.topics.get_mut(s.topic).expect("inserted above");
        t.messages += 1;
        t.bytes += s.payload.len() as u64;
        t.gaps += gap;
    }
}

impl TrafficTap {
    fn snapshot(&self) -> (HashMap<String, Traffic>, u64) {
        let st = self.state.lock().expect("poisoned");
        (st.topics.clone(), st.untracked)
    }
}

/// One row of the topic table.
#[derive(Debug, Clone, Serialize)]
pub struct TopicRow {
    pub topic: String,
    pub datatype: String,
    pub publishers: usize,
    pub subscribers: usize,
    /// Messages per second: measured from received data when this node sees it, otherwise from
    /// the publishers' registered send counters.
    pub rate_hz: f64,
    pub bytes_per_s: f64,
    /// `received` (data seen by this tool) or `registration` (publishers' counters).
    pub rate_source: &'static str,
    /// Messages seen by this tool.
    pub messages_seen: u64,
    /// Lost messages: sequence gaps seen here plus drops subscribers report.
    pub drops: u64,
    #[serde(skip)]
    pub history: Vec<f64>,
}

/// What this tool's node heard on the registration channel, and what it lost: each loss
/// delays discovery by a refresh period (every sample is resent), so losses that keep growing
/// mean the receive buffer or the CPU cannot keep up with the system's registration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RegistrationHealth {
    /// Registration datagrams received.
    pub datagrams: u64,
    /// Samples identical to their entity's last one (refreshed without decoding).
    pub unchanged: u64,
    /// Registration messages lost, all causes (the sum of the four below).
    pub lost: u64,
    /// Dropped by the OS (socket buffer full) or the capture (its buffer full).
    pub dropped_by_os: u64,
    /// Fragmented messages never completed (a fragment lost, or expired).
    pub incomplete: u64,
    /// Truncated datagrams, malformed frames, undecodable protobuf.
    pub malformed: u64,
    /// New entities or processes refused because the table is at its bound.
    pub table_full: u64,
    /// New or grown entries refused because the table is at its byte budget
    /// (`registration.max_table_bytes`), and the bytes it holds now.
    pub over_budget: u64,
    pub table_bytes: u64,
}

impl RegistrationHealth {
    pub fn of(s: &middleware::ChannelStats, table_bytes: u64) -> Self {
        Self {
            over_budget: s.registration_over_budget,
            table_bytes,
            datagrams: s.transport.received_datagrams,
            unchanged: s.registration_unchanged,
            lost: s.losses(),
            dropped_by_os: s.transport.os_dropped,
            incomplete: s.reassembly.lost_messages(),
            malformed: s.transport.truncated + s.bad_frame + s.bad_protobuf,
            table_full: s.registration_table_full,
        }
    }

    /// One line: counts, and the losses by cause when there are any.
    pub fn line(&self) -> String {
        let mut t = format!("{} datagrams received, {} lost", self.datagrams, self.lost);
        if self.lost > 0 {
            t += &format!(
                " ({} dropped by the OS or capture, {} incomplete, {} malformed, {} table full, {} over the byte budget)",
                self.dropped_by_os, self.incomplete, self.malformed, self.table_full, self.over_budget
            );
        }
        t + &format!("; remote table {:.1} MiB", self.table_bytes as f64 / f64::from(1 << 20))
    }
}

/// Everything one refresh shows.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub transport: String,
    pub mode: String,
    pub processes: Vec<RemoteProcess>,
    pub entities: Vec<RemoteEntity>,
    pub topics: Vec<TopicRow>,
    pub untracked_samples: u64,
    /// This tool's registration channel: received and lost.
    pub registration: RegistrationHealth,
}

/// Time, traffic per topic, and (send clock, message size) per publisher at one refresh.
type Snapshot = (Instant, HashMap<String, Traffic>, HashMap<u64, (i64, i32)>);

/// Rate computation between refreshes.
#[derive(Default)]
pub struct Rates {
    last: Option<Snapshot>,
    history: HashMap<String, VecDeque<f64>>,
}

impl Rates {
    pub fn view(&mut self, ctx: &Ctx, tap: &TrafficTap) -> View {
        let now = Instant::now();
        let mut processes = ctx.node.remote_processes();
        processes.sort_by(|a, b| (&a.host_name, a.process_id).cmp(&(&b.host_name, b.process_id)));
        let mut entities = ctx.node.remote_entities();
        entities.sort_by(|a, b| {
            (&a.topic_name, a.direction as u8, a.entity_id).cmp(&(&b.topic_name, b.direction as u8, b.entity_id))
        });
        let (traffic, untracked) = tap.snapshot();
        let clocks: HashMap<u64, (i64, i32)> = entities
            .iter()
            .filter(|e| e.direction == Direction::Publisher)
            .map(|e| (e.entity_id, (e.data_clock, e.topic_size)))
            .collect();
        let mut names: BTreeMap<String, ()> = entities.iter().map(|e| (e.topic_name.clone(), ())).collect();
        names.extend(traffic.keys().map(|k| (k.clone(), ())));
        let mut topics = Vec::new();
        for name in names.into_keys() {
            let of_topic: Vec<&RemoteEntity> = entities.iter().filter(|e| e.topic_name == name).collect();
            let pubs: Vec<&&RemoteEntity> = of_topic.iter().filter(|e| e.direction == Direction::Publisher).collect();
            let subs = of_topic.len() - pubs.len();
            let seen = traffic.get(&name).cloned().unwrap_or_default();
            let (mut rate, mut bw, mut source) = (0.0, 0.0, "received");
            if let Some((t0, prev, prev_clocks)) = &self.last {
                let dt = now.duration_since(*t0).as_secs_f64().max(1e-3);
                let before = prev.get(&name).cloned().unwrap_or_default();
                rate = (seen.messages - before.messages.min(seen.messages)) as f64 / dt;
                bw = (seen.bytes - before.bytes.min(seen.bytes)) as f64 / dt;
                if seen.messages == 0 {
                    // Not received here (no subscriber on this network path): publishers' counters.
                    source = "registration";
                    let mut sent = 0u64;
                    let mut bytes = 0f64;
                    for p in &pubs {
                        if let Some((c0, _)) = prev_clocks.get(&p.entity_id) {
                            let d = clock_advance(*c0, p.data_clock);
                            sent = sent.saturating_add(d);
                            bytes += d as f64 * f64::from(p.topic_size.max(0));
                        }
                    }
                    rate = sent as f64 / dt;
                    bw = bytes / dt;
                }
            }
            let reported: u64 = of_topic
                .iter()
                .filter(|e| e.direction == Direction::Subscriber)
                .map(|e| e.message_drops.max(0) as u64)
                .sum();
            let h = self.history.entry(name.clone()).or_default();
            h.push_back(rate);
            while h.len() > HISTORY {
                h.pop_front();
            }
            let datatype = pubs
                .first()
                .map(|p| datatype_of(p))
                .or_else(|| of_topic.first().map(|e| datatype_of(e)))
                .unwrap_or_else(|| "-".into());
            topics.push(TopicRow {
                topic: name,
                datatype,
                publishers: pubs.len(),
                subscribers: subs,
                rate_hz: rate,
                bytes_per_s: bw,
                rate_source: source,
                messages_seen: seen.messages,
                drops: seen.gaps + reported,
                history: h.iter().copied().collect(),
            });
        }
        self.history.retain(|k, _| topics.iter().any(|t| &t.topic == k));
        self.last = Some((now, traffic, clocks));
        View {
            transport: ctx.transport.clone(),
            mode: ctx.node.config().mode().to_string(),
            processes,
            entities,
            topics,
            untracked_samples: untracked,
            registration: {
                let st = ctx.node.stats();
                RegistrationHealth::of(&st.registration, st.remote_table_bytes)
            },
        }
    }
}

/// A process's registered state as eCAL Monitor names it: severity, level, text.
fn process_state(p: &RemoteProcess) -> String {
    let sev = match p.state_severity {
        0 => "unknown",
        1 => "healthy",
        2 => "warning",
        3 => "critical",
        4 => "failed",
        _ => "?",
    };
    if p.state_info.is_empty() {
        format!("{sev} L{}", p.state_level)
    } else {
        format!("{sev} L{} {}", p.state_level, p.state_info)
    }
}

fn datatype_of(e: &RemoteEntity) -> String {
    match (e.datatype_encoding.as_str(), e.datatype_name.as_str()) {
        ("", "") => "-".into(),
        ("", n) => n.into(),
        (enc, "") => enc.into(),
        (enc, n) => format!("{enc}:{n}"),
    }
}

/// Small bar graph of the rate history.
fn sparkline(h: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = h.iter().copied().fold(0.0, f64::max);
    h.iter()
        .map(|&v| if max <= 0.0 { BARS[0] } else { BARS[((v / max) * 7.0).round().clamp(0.0, 7.0) as usize] })
        .collect()
}

pub fn human_rate(bytes_per_s: f64) -> String {
    match bytes_per_s {
        b if b >= 1e9 => format!("{:.2} GB/s", b / 1e9),
        b if b >= 1e6 => format!("{:.2} MB/s", b / 1e6),
        b if b >= 1e3 => format!("{:.1} kB/s", b / 1e3),
        b => format!("{b:.0} B/s"),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The table a refresh prints.
pub fn render(v: &View) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "mwctl monitor  transport {}  mode {}  {} processes  {} entities  {} topics",
        v.transport,
        v.mode,
        v.processes.len(),
        v.entities.len(),
        v.topics.len()
    );
    let _ = writeln!(o, "registration: {}", v.registration.line());
    let _ = writeln!(
        o,
        "\nPROCESSES\n{:<16} {:>8}  {:<24} {:<24} {:<16} RUNTIME",
        "HOST", "PID", "UNIT", "STATE", "COMPONENTS"
    );
    for p in &v.processes {
        let _ = writeln!(
            o,
            "{:<16} {:>8}  {:<24} {:<24} {:<16} {}",
            truncate(&p.host_name, 16),
            p.process_id,
            truncate(&p.unit_name, 24),
            truncate(&process_state(p), 24),
            truncate(&p.components, 16),
            p.runtime_version
        );
    }
    let _ = writeln!(
        o,
        "\nTOPICS\n{:<24} {:<28} {:>4} {:>4} {:>9} {:>11} {:>7}  RATE",
        "TOPIC", "DATATYPE", "PUB", "SUB", "MSG/S", "BANDWIDTH", "DROPS"
    );
    for t in &v.topics {
        let mark = if t.rate_source == "registration" { "*" } else { " " };
        let _ = writeln!(
            o,
            "{:<24} {:<28} {:>4} {:>4} {:>8.1}{mark} {:>11} {:>7}  {}",
            truncate(&t.topic, 24),
            truncate(&t.datatype, 28),
            t.publishers,
            t.subscribers,
            t.rate_hz,
            human_rate(t.bytes_per_s),
            t.drops,
            sparkline(&t.history)
        );
    }
    let _ = writeln!(
        o,
        "\nENTITIES\n{:<4} {:<24} {:<16} {:>8}  {:<20} {:<10} {:>5} {:>5} {:>10} {:>9} {:>9} {:>6}",
        "DIR", "TOPIC", "HOST", "PID", "UNIT", "LAYERS", "CONN", "EXT", "CLOCK", "HZ", "SIZE", "DROPS"
    );
    for e in &v.entities {
        let _ = writeln!(
            o,
            "{:<4} {:<24} {:<16} {:>8}  {:<20} {:<10} {:>5} {:>5} {:>10} {:>9.2} {:>9} {:>6}",
            if e.direction == Direction::Publisher { "pub" } else { "sub" },
            truncate(&e.topic_name, 24),
            truncate(&e.host_name, 16),
            e.process_id,
            truncate(&e.unit_name, 20),
            if e.layers.is_empty() { "-".to_string() } else { e.layers.join(",") },
            e.connections_local,
            e.connections_external,
            e.data_clock,
            f64::from(e.data_frequency_mhz) / 1000.0,
            e.topic_size,
            e.message_drops
        );
    }
    let _ = writeln!(
        o,
        "(HZ, SIZE, DROPS and CLOCK as each entity registers them: send or receive rate, last message \
         size, messages lost, messages sent or received)"
    );
    if v.topics.iter().any(|t| t.rate_source == "registration") {
        let _ = writeln!(o, "\n* rate from the publishers' registered counters (data not received here)");
    }
    if v.untracked_samples > 0 {
        let _ = writeln!(o, "{} samples of untracked topics (table full at {MAX_TOPICS})", v.untracked_samples);
    }
    o
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON snapshot after --wait seconds and exit (for scripts).
    #[arg(long)]
    json: bool,
    /// Seconds to listen before the JSON snapshot (registration arrives every second).
    #[arg(long, default_value_t = 3.0)]
    wait: f64,
    /// Refresh period in milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    seconds: Option<f64>,
}

pub fn run(ctx: &Ctx, tap: &Arc<TrafficTap>, args: &Args) -> anyhow::Result<i32> {
    let mut rates = Rates::default();
    let start = Instant::now();
    rates.view(ctx, tap);
    if args.json {
        let wait = Duration::from_secs_f64(args.wait.max(0.0));
        // Two measurements: rates need a baseline after discovery.
        crate::sleep_until(start + wait / 2);
        rates.view(ctx, tap);
        crate::sleep_until(start + wait);
        let v = rates.view(ctx, tap);
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let tty = std::io::stdout().is_terminal();
    let period = Duration::from_millis(args.interval_ms.max(50));
    let mut next = start + period;
    loop {
        crate::sleep_until(next);
        next += period;
        let v = rates.view(ctx, tap);
        // Joining every topic's group also hears pre-6.1 senders that use per-topic groups.
        for t in &v.topics {
            let _ = ctx.node.join_topic(&t.topic);
        }
        let text = render(&v);
        let mut out = std::io::stdout().lock();
        if tty {
            // Home + clear: the table updates in place.
            write!(out, "\x1b[H\x1b[2J{text}")?;
        } else {
            writeln!(out, "{text}")?;
        }
        out.flush()?;
        if middleware::cli::stopping() || args.seconds.is_some_and(|s| start.elapsed().as_secs_f64() >= s) {
            return Ok(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_from_the_network_never_overflow() {
        assert_eq!(clock_gap(None, 5), 0);
        assert_eq!(clock_gap(Some(4), 5), 0);
        assert_eq!(clock_gap(Some(4), 7), 2);
        assert_eq!(clock_gap(Some(9), 7), 0);
        // `last + 1` and `clock - last - 1` overflowed here (a panic in debug builds).
        assert_eq!(clock_gap(Some(i64::MAX), i64::MAX), 0);
        assert_eq!(clock_gap(Some(i64::MIN), i64::MAX), u64::MAX - 1);
        assert_eq!(clock_gap(Some(i64::MAX), i64::MIN), 0);
        assert_eq!(clock_advance(i64::MIN, i64::MAX), u64::MAX);
        assert_eq!(clock_advance(i64::MAX, i64::MIN), 0);
        assert_eq!(clock_advance(10, 15), 5);
        // Through the tap as a hostile sender would drive it.
        let tap = TrafficTap::default();
        let src = "127.0.0.1:1".parse().unwrap();
        for clock in [i64::MAX, i64::MIN, i64::MAX] {
            tap.data_sample(&TappedSample {
                topic: "t",
                publisher_id: 1,
                host_name: "h",
                clock,
                send_time_us: 0,
                payload: b"x",
                message_len: 10,
                source: src,
            });
        }
        assert_eq!(tap.snapshot().0["t"].messages, 3);
    }

    #[test]
    fn sparkline_scales_to_max() {
        assert_eq!(sparkline(&[0.0, 5.0, 10.0]), "▁▅█");
        assert_eq!(sparkline(&[0.0, 0.0]), "▁▁");
    }

    #[test]
    fn tap_counts_messages_bytes_and_gaps() {
        let tap = TrafficTap::default();
        let src = "127.0.0.1:1".parse().unwrap();
        let mk = |clock| TappedSample {
            topic: "t",
            publisher_id: 7,
            host_name: "h",
            clock,
            send_time_us: 0,
            payload: b"abcd",
            message_len: 40,
            source: src,
        };
        for c in [1, 2, 5, 6] {
            tap.data_sample(&mk(c));
        }
        let (t, untracked) = tap.snapshot();
        let t = &t["t"];
        assert_eq!((t.messages, t.bytes, t.gaps, untracked), (4, 16, 2, 0));
    }

    #[test]
    fn human_rates() {
        assert_eq!(human_rate(12.0), "12 B/s");
        assert_eq!(human_rate(1500.0), "1.5 kB/s");
        assert_eq!(human_rate(2_500_000.0), "2.50 MB/s");
    }
}
