//! `mwctl echo TOPIC`: prints a topic's messages as they arrive, decoded by the datatype its
//! publishers announce: protobuf field by field (descriptor from registration), strings as text,
//! anything else as a short hex dump.

use crate::protodec::{hex_dump, render_untyped, Schema};
use crate::Ctx;
use middleware::core::registration::Direction;
use middleware::core::Raw;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// By the announced datatype (proto, string), else text when printable, else hex.
    Auto,
    Text,
    Hex,
    /// Protobuf with the announced descriptor, or field numbers without one.
    Proto,
    /// One JSON object per message (payload as text or hex).
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Topic to print.
    topic: String,
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    format: Format,
    /// Exit after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Exit after this many seconds (status 1 if --count was given and not reached).
    #[arg(long)]
    seconds: Option<f64>,
    /// Hex dump lines per message at most.
    #[arg(long, default_value_t = 8)]
    hex_lines: usize,
}

/// How long the first message of a topic whose publisher is not registered yet waits for it.
const REGISTRATION_WAIT: Duration = Duration::from_secs(1);

/// How to print payloads of one topic, from what registration says about its publishers.
struct Decoder {
    encoding: String,
    type_name: String,
    schema: Option<Schema>,
}

impl Decoder {
    fn from_registration(ctx: &Ctx, topic: &str) -> Option<Self> {
        let e = ctx
            .node
            .remote_entities()
            .into_iter()
            .find(|e| e.direction == Direction::Publisher && e.topic_name == topic)?;
        let schema =
            if e.datatype_encoding == "proto" { Schema::from_descriptor(&e.datatype_descriptor) } else { None };
        Some(Self { encoding: e.datatype_encoding, type_name: e.datatype_name, schema })
    }

    fn is_string(&self) -> bool {
        self.type_name == "std::string" || self.encoding == "string" || self.type_name == "string"
    }
}

fn printable(b: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(b).ok()?;
    s.chars().all(|c| !c.is_control() || c == '\n' || c == '\t' || c == '\r').then_some(s)
}

fn body(format: Format, dec: Option<&Decoder>, payload: &[u8], hex_lines: usize) -> String {
    let proto = |d: Option<&Decoder>| match d.and_then(|d| d.schema.as_ref().map(|s| (s, d))) {
        Some((s, d)) if s.has(&d.type_name) => s.render(&d.type_name, payload),
        _ => render_untyped(payload),
    };
    match format {
        Format::Hex => hex_dump(payload, hex_lines),
        Format::Text => format!("{}\n", String::from_utf8_lossy(payload)),
        Format::Proto => {
            proto(dec).unwrap_or_else(|e| format!("(not protobuf: {e})\n{}", hex_dump(payload, hex_lines)))
        }
        Format::Auto | Format::Json => {
            if dec.is_some_and(|d| d.encoding == "proto") {
                if let Ok(t) = proto(dec) {
                    return t;
                }
            }
            if dec.is_some_and(Decoder::is_string) || printable(payload).is_some() {
                if let Some(s) = printable(payload) {
                    return format!("{s}\n");
                }
            }
            hex_dump(payload, hex_lines)
        }
    }
}

pub fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<i32> {
    let sub = ctx.node.subscriber::<Raw>(&args.topic)?;
    let start = Instant::now();
    let mut dec: Option<Decoder> = None;
    let mut last_lookup: Option<Instant> = None;
    let mut n = 0u64;
    let done = |n: u64| args.count.is_some_and(|c| n >= c);
    while !done(n) && !middleware::cli::stopping() && !args.seconds.is_some_and(|s| start.elapsed().as_secs_f64() >= s)
    {
        let Some(r) = sub.recv_timeout(Duration::from_millis(100)) else { continue };
        // The publisher's registration may trail its first messages (a publisher sends as soon
        // as it sees our subscriber; its own registration round can follow a quarter refresh
        // period later): before printing the first message undecoded, wait up to a second for
        // it (once: a publisher that never registers costs one second, not one per message).
        if dec.is_none() && last_lookup.is_none_or(|t| t.elapsed() >= Duration::from_millis(200)) {
            let until = Instant::now() + if last_lookup.is_none() { REGISTRATION_WAIT } else { Duration::ZERO };
            dec = Decoder::from_registration(ctx, &args.topic);
            while dec.is_none() && Instant::now() < until && !middleware::cli::stopping() {
                std::thread::sleep(Duration::from_millis(20));
                dec = Decoder::from_registration(ctx, &args.topic);
            }
            last_lookup = Some(Instant::now());
        }
        n += 1;
        let publisher = sub.publishers().into_iter().find(|p| p.entity_id == r.publisher_id);
        let from =
            publisher.map_or_else(|| r.publisher_id.to_string(), |p| format!("{}@{}", p.process_id, p.host_name));
        if args.format == Format::Json {
            let text = printable(&r.value).map(str::to_string);
            let v = serde_json::json!({
                "topic": args.topic, "clock": r.clock, "publisher": from, "send_time_us": r.send_time_us,
                "size": r.value.len(),
                "text": text,
                "hex": if text.is_none() { Some(r.value.iter().map(|b| format!("{b:02x}")).collect::<String>()) } else { None },
                "decoded": dec.as_ref().filter(|d| d.encoding == "proto").map(|_| body(Format::Proto, dec.as_ref(), &r.value, 0)),
            });
            println!("{v}");
            continue;
        }
        let dt = dec.as_ref().map_or_else(String::new, |d| format!(" {}:{}", d.encoding, d.type_name));
        print!(
            "--- {} #{} from {from} ({} bytes{dt})\n{}",
            args.topic,
            r.clock,
            r.value.len(),
            body(args.format, dec.as_ref(), &r.value, args.hex_lines)
        );
    }
    let s = sub.stats();
    eprintln!("{n} messages ({} lost in sequence gaps, {} dropped by the queue)", s.sequence_gaps, s.queue_overflow);
    if s.clock_jumps_held + s.clock_resyncs > 0 {
        // A publisher's clock jumped far ahead (a burst of loss, or a forged sample) or the
        // order filter had to follow a stream it had been shut out of (a forged clock).
        eprintln!(
            "order filter: {} clock jumps held until confirmed, {} resynchronisations to a publisher's stream",
            s.clock_jumps_held, s.clock_resyncs
        );
    }
    Ok(if args.count.is_some_and(|c| n < c) { 1 } else { 0 })
}
