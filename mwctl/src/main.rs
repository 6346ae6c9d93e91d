//! `mwctl`: the operator's tool, run next to the applications. Sees this project's processes and
//! real eCAL 6 ones alike, because it speaks the same registration and data protocol.
//!
//! * `monitor`: processes, publishers, subscribers; per-topic rate, bandwidth, drops;
//! * `echo TOPIC`: messages as they arrive, decoded by the announced datatype;
//! * `record`: the recorded topics' messages to MCAP, with their protobuf schemas, or the
//!   registration and data traffic to pcapng; `replay FILE` re-publishes either;
//! * `doctor`: checks what breaks deployments and says how to fix it.

mod doctor;
mod echo;
mod mcapfile;
mod monitor;
mod pcapng;
mod protodec;
mod record;
mod replay;

use clap::{Parser, Subcommand};
use middleware::cli::{init_logging, stop_on_ctrl_c, CommonArgs};
use middleware::{open_node_with, Node, Tap, Taps};
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "mwctl",
    version,
    about = "Monitor, echo, record, replay and diagnose eCAL-compatible pub/sub traffic"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Live table of processes, publishers, subscribers and per-topic traffic (--json: one snapshot).
    Monitor {
        #[command(flatten)]
        args: monitor::Args,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Print the messages of a topic as they arrive.
    Echo {
        #[command(flatten)]
        args: echo::Args,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Record topics to MCAP (`--out FILE.mcap`: per-topic channels with protobuf schemas) or the
    /// traffic to pcapng (Wireshark, tcpdump).
    Record {
        #[command(flatten)]
        args: record::Args,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Re-publish the data samples of a recording.
    Replay {
        #[command(flatten)]
        args: replay::Args,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Check capture library and permission, routes, buffers, peers' mode and host names, firewall.
    Doctor {
        #[command(flatten)]
        args: doctor::Args,
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// What every node-based subcommand gets.
pub struct Ctx {
    pub node: Node,
    /// The transport in use, and why (`auto` fallback).
    pub transport: String,
}

pub fn open(common: &CommonArgs, taps: &Taps) -> anyhow::Result<Ctx> {
    let mut config = common.load()?;
    // Tools see everything, their own registration included (useful on a lone host).
    config.set("registration.loopback", "true")?;
    let node = open_node_with(config, taps)?;
    let transport = node.transport().to_string();
    Ok(Ctx { node, transport })
}

/// Sleeps until `t` (returns at once if it has passed), waking early on Ctrl-C.
pub fn sleep_until(t: Instant) {
    while !middleware::cli::stopping() {
        let now = Instant::now();
        if now >= t {
            return;
        }
        std::thread::sleep((t - now).min(std::time::Duration::from_millis(100)));
    }
}

fn main() {
    init_logging();
    stop_on_ctrl_c();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Monitor { args, common } => {
            let tap = Arc::new(monitor::TrafficTap::default());
            let taps = Taps { node: Some(Arc::clone(&tap) as Arc<dyn Tap>), frames: None };
            open(&common, &taps).and_then(|ctx| monitor::run(&ctx, &tap, &args))
        }
        Cmd::Echo { args, common } => open(&common, &Taps::default()).and_then(|ctx| echo::run(&ctx, &args)),
        Cmd::Record { args, common } if args.format() == record::Format::Mcap => record::run_mcap(&common, &args),
        Cmd::Record { args, common } => (|| {
            let config = common.load()?;
            let rec = Arc::new(record::Recorder::create(&args.out, &args.topic, &config)?);
            let frames: middleware::FrameTap = {
                let r = Arc::clone(&rec);
                Arc::new(move |f| r.on_frame(f))
            };
            let taps = Taps { node: Some(Arc::clone(&rec) as Arc<dyn Tap>), frames: Some(frames) };
            let ctx = open(&common, &taps)?;
            record::run(&ctx, &rec, &args)
        })(),
        Cmd::Replay { args, common } => open(&common, &Taps::default()).and_then(|ctx| replay::run(&ctx, &args)),
        Cmd::Doctor { args, common } => common.load().and_then(|c| doctor::run(&c, &args)),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("mwctl: error: {e:#}");
            std::process::exit(2);
        }
    }
}
