//! Shared by the example programs: transport selection from the config, command-line options
//! common to all programs, payload generation and digests.
//!
//! This package depends on every transport, so the one `match` on
//! [`middleware_core::config::TransportKind`] lives here.

use anyhow::Context;
use middleware_core::config::{Config, TransportKind};
use middleware_core::{Node, Tap};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;

/// Options every program takes; each falls back to the config file and environment.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Transport: socket, npcap or auto (config key `transport`).
    #[arg(long)]
    pub transport: Option<String>,
    /// eCAL communication mode: local (this host) or network (multicast) (config key `mode`).
    #[arg(long)]
    pub mode: Option<String>,
    /// Network interface name or IPv4 address (config key `network.interface`).
    #[arg(long)]
    pub interface: Option<String>,
    /// TOML config file (default: $MW_CONFIG, if set).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl CommonArgs {
    /// Loads the config: defaults, file, environment, then these options.
    ///
    /// # Errors
    /// Bad config value, unreadable file.
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut c = Config::load(self.config.as_deref())?;
        if let Some(v) = &self.transport {
            c.set("transport", v)?;
        }
        if let Some(v) = &self.mode {
            c.set("mode", v)?;
        }
        if let Some(v) = &self.interface {
            c.set("network.interface", v)?;
        }
        Ok(c)
    }
}

/// Installs a stderr logger filtered by `MW_LOG` (or `RUST_LOG`), default `warn`.
pub fn init_logging() {
    let filter = std::env::var("MW_LOG").or_else(|_| std::env::var("RUST_LOG")).unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Set by Ctrl-C (SIGINT/SIGTERM): long-running programs stop their loops so the node is dropped
/// normally and sends its unregistration, instead of peers waiting for the 10 s timeout.
pub static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Installs the Ctrl-C handler that sets [`STOP`]; a second Ctrl-C exits at once.
pub fn stop_on_ctrl_c() {
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
}

/// Whether Ctrl-C was pressed.
pub fn stopping() -> bool {
    STOP.load(std::sync::atomic::Ordering::Relaxed)
}

/// Which transport [`open_node`] chose and why (for summaries and `doctor`-style output).
pub static TRANSPORT_CHOICE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Observers a tool attaches when it opens its node: see [`open_node_with`].
#[derive(Clone, Default)]
pub struct Taps {
    /// Sees every datagram and decoded sample the node receives.
    pub node: Option<Arc<dyn Tap>>,
    /// Sees every captured frame (packet capture transport only).
    pub frames: Option<transport_udp_npcap::FrameTap>,
}

fn open_npcap(config: &Config, taps: &Taps) -> anyhow::Result<Node> {
    let mut factory = transport_udp_npcap::NpcapFactory::new(config)?;
    if let Some(t) = &taps.frames {
        factory = factory.with_frame_tap(Arc::clone(t));
    }
    Ok(Node::with_tap(config.clone(), &factory, taps.node.clone())?)
}

/// Opens a node on the transport the config selects. `auto` captures when the capture library
/// (loaded at run time) is installed, lists the devices the mode needs and the devices open;
/// otherwise it falls back to sockets. Either way one log line says what was chosen and why,
/// also recorded in [`TRANSPORT_CHOICE`].
///
/// # Errors
/// The transport cannot be opened (for `npcap`: the library or the capture permission is
/// missing; the message says what to install or grant).
pub fn open_node(config: Config) -> anyhow::Result<Node> {
    open_node_with(config, &Taps::default())
}

/// [`open_node`] with observers attached.
///
/// # Errors
/// As [`open_node`].
pub fn open_node_with(config: Config, taps: &Taps) -> anyhow::Result<Node> {
    let socket = |config: Config| {
        Node::with_tap(config, &transport_udp_socket::factory, taps.node.clone()).context("opening socket transport")
    };
    let (node, choice) = match config.transport {
        TransportKind::Socket => (socket(config)?, "socket".to_string()),
        TransportKind::Npcap => {
            (open_npcap(&config, taps).context("opening the npcap (packet capture) transport")?, "npcap".to_string())
        }
        TransportKind::Auto => {
            let d = transport_udp_npcap::decide(config.mode, &transport_udp_npcap::availability(&config));
            let opened =
                if d.capture { open_npcap(&config, taps).map_err(|e| format!("{e:#}")) } else { Err(d.reason.clone()) };
            match opened {
                Ok(node) => {
                    tracing::info!("transport auto: packet capture with {}", d.reason);
                    (node, format!("npcap (auto: {})", d.reason))
                }
                Err(why) => {
                    tracing::warn!("transport auto: packet capture unavailable ({why}); falling back to sockets");
                    let node = socket(config)?;
                    (node, format!("socket (auto fallback: {why})"))
                }
            }
        }
    };
    let _ = TRANSPORT_CHOICE.set(choice);
    Ok(node)
}

/// CPU time (user + system) this process has used so far, in seconds; `None` where
/// `/proc/self/stat` does not exist (non-Linux).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; in clock ticks.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The most resident memory this process has used (VmHWM), in KiB; `None` where
/// `/proc/self/status` does not exist (non-Linux).
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Payload `k` of the captures' `mod251` generator: `size` bytes, byte i = (i + k) mod 251.
pub fn mod251(size: usize, k: usize) -> Vec<u8> {
    (0..size).map(|i| ((i + k) % 251) as u8).collect()
}

/// Digest over a message stream, each message prefixed by its length as u64 little-endian
/// (the peer scripts that produced the captures' `*.pub.json` compute the same).
#[derive(Debug, Clone, Default)]
pub struct StreamDigest {
    h: Sha256,
    pub count: u64,
    pub bytes: u64,
    /// Count only (benchmarks: hashing 64 KiB costs more than receiving it).
    pub count_only: bool,
}

impl StreamDigest {
    pub fn counting_only() -> Self {
        Self { count_only: true, ..Self::default() }
    }
    pub fn update(&mut self, msg: &[u8]) {
        if !self.count_only {
            self.h.update((msg.len() as u64).to_le_bytes());
            self.h.update(msg);
        }
        self.count += 1;
        self.bytes += msg.len() as u64;
    }
    /// The digest, or an empty string when only counting.
    pub fn hex(&self) -> String {
        if self.count_only {
            return String::new();
        }
        self.h.clone().finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The example protobuf type: a person record, with a hand-built descriptor so eCAL tools can
/// decode it without the `.proto` file.
pub mod people {
    use prost::Message;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Person {
        #[prost(int32, tag = "1")]
        pub id: i32,
        #[prost(string, tag = "2")]
        pub name: String,
        #[prost(string, tag = "3")]
        pub email: String,
    }

    impl middleware_core::ProtoType for Person {
        fn full_name() -> String {
            "pb.People.Person".into()
        }
        fn descriptor() -> Vec<u8> {
            use prost_types::field_descriptor_proto::{Label, Type};
            use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet};
            let field = |name: &str, number, ty: Type| FieldDescriptorProto {
                name: Some(name.into()),
                number: Some(number),
                label: Some(Label::Optional as i32),
                r#type: Some(ty as i32),
                json_name: Some(name.into()),
                ..Default::default()
            };
            FileDescriptorSet {
                file: vec![FileDescriptorProto {
                    name: Some("person.proto".into()),
                    package: Some("pb.People".into()),
                    syntax: Some("proto3".into()),
                    message_type: vec![DescriptorProto {
                        name: Some("Person".into()),
                        field: vec![
                            field("id", 1, Type::Int32),
                            field("name", 2, Type::String),
                            field("email", 3, Type::String),
                        ],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
            .encode_to_vec()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_capture_peer_json() {
        // cap1_small_strings.pub.json: 10 x "msg-%06d" -> eaa5d4ad...0754.
        let mut d = StreamDigest::default();
        for k in 0..10 {
            d.update(format!("msg-{k:06}").as_bytes());
        }
        assert_eq!(d.hex(), "eaa5d4ada75ffc9114ab23517827e97fd24ce0e8ef02bf077c07d5c6e6800754");
    }

    #[test]
    fn mod251_generator() {
        assert_eq!(mod251(4, 0), vec![0, 1, 2, 3]);
        assert_eq!(mod251(3, 250), vec![250, 0, 1]);
    }
}
