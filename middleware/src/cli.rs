//! For command-line programs (cargo feature `cli`): the options every program of this project
//! takes, logging to stderr, and Ctrl-C handling that lets a node shut down cleanly.

use crate::Config;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

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

static STOP: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C (SIGINT/SIGTERM) handler: long-running programs poll [`stopping`] and
/// end their loops, so the node is dropped normally and sends its unregistration instead of
/// peers waiting for the timeout. A second Ctrl-C exits at once.
pub fn stop_on_ctrl_c() {
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
}

/// Whether Ctrl-C was pressed.
pub fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}
