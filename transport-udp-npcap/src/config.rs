//! The pcap transport's own options, under `npcap.` in the common configuration
//! (`[npcap]` in the file, `MW_NPCAP_<KEY>` in the environment).
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `npcap.library` | the platform's usual places | path of libpcap / Npcap's `wpcap.dll`, loaded at run time |
//! | `npcap.interfaces` | the interface the group routes to (network mode), loopback (local mode) | comma-separated capture device names |
//! | `npcap.buffer_size` | `64MiB` | kernel capture buffer (ring); the perf notes show 4 MiB suffices for small datagrams but fragmented streams need 64 MiB. On Windows this is what one CPU's share of Npcap's buffer must hold: the request is scaled by the CPU count (see `docs/windows.md`) |
//! | `npcap.min_to_copy` | `256KiB` | Windows (Npcap) with `immediate = false`: bytes buffered in the driver before the capture's event wakes the thread (`pcap_setmintocopy`; Npcap's default 16 000); `timeout_ms` still bounds the wait. Ignored elsewhere |
//! | `npcap.snaplen` | `262144` | bytes captured per frame (loopback frames reach 65 550 bytes, so 65 535 is too small) |
//! | `npcap.immediate` | `false` | deliver every frame at once (lowest latency, most CPU) instead of in blocks |
//! | `npcap.timeout_ms` | `2` | with `immediate = false`: the longest a frame waits in a partly filled block (the latency bound; WinPcap's "delayed write") |
//! | `npcap.spin_us` | `200` | with `immediate = true`: after a frame that leaves an IPv4 datagram incomplete, keep reading the ring this long before sleeping, so the next fragments cost no wake-up each (0 = never) |
//! | `npcap.queue_bytes` | | no longer used (accepted, with a warning): datagrams go from the capture thread to the node's sink, no queue between |
//! | `npcap.ip_timeout_ms` | `5000` | IPv4 reassembly expiry |
//! | `npcap.ip_max_datagrams` | `1024` | concurrent partial IPv4 datagrams |
//! | `npcap.ip_max_buffered_bytes` | `64MiB` | bytes held by partial IPv4 datagrams |

use crate::ip_reassembly::IpReassemblyConfig;
use middleware_core::config::{parse_bytes, ConfigError, Origin};
use std::collections::BTreeMap;
use std::time::Duration;

/// The keys under `npcap.` this transport accepts (anything else is an unknown-key error).
pub const KEYS: &[&str] = &[
    "library",
    "interfaces",
    "buffer_size",
    "min_to_copy",
    "snaplen",
    "immediate",
    "timeout_ms",
    "spin_us",
    "queue_bytes",
    "ip_timeout_ms",
    "ip_max_datagrams",
    "ip_max_buffered_bytes",
];

/// The validated `npcap.*` options (see the module's table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpcapConfig {
    /// Explicit capture library path (`None`: search the usual places).
    pub library: Option<String>,
    /// `npcap.interfaces`: capture devices (empty: the one the group routes to, or loopback in local
    /// mode).
    pub interfaces: Vec<String>,
    /// `npcap.buffer_size`: the kernel capture buffer (ring) in bytes.
    pub buffer_size: usize,
    /// `npcap.min_to_copy`: Npcap's "minimum to copy" in block mode (Windows only).
    pub min_to_copy: usize,
    /// `npcap.snaplen`: bytes captured per frame at most.
    pub snaplen: usize,
    /// `npcap.immediate`: deliver every frame at once instead of in blocks.
    pub immediate: bool,
    /// `npcap.timeout_ms`: in block mode, the longest a frame waits in a partly filled block.
    pub timeout_ms: u32,
    /// `npcap.spin_us`: in immediate mode, how long to keep reading after a frame that leaves an IPv4
    /// datagram incomplete.
    pub spin_us: u32,
    /// `npcap.ip_*`: bounds of IPv4 reassembly (time, partial datagrams, bytes).
    pub ip: IpReassemblyConfig,
}

impl Default for NpcapConfig {
    fn default() -> Self {
        Self {
            library: None,
            interfaces: Vec::new(),
            buffer_size: 64 << 20,
            min_to_copy: 256 << 10,
            snaplen: 262_144,
            immediate: false,
            timeout_ms: 2,
            spin_us: 200,
            ip: IpReassemblyConfig::default(),
        }
    }
}

impl NpcapConfig {
    /// Parses the `npcap.*` entries of the common configuration.
    ///
    /// # Errors
    /// Unknown key or bad value, naming the key and what it accepts.
    pub fn from_entries(entries: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut c = Self::default();
        for (k, v) in entries {
            let key = format!("npcap.{k}");
            let bad = |expected: &str| ConfigError::InvalidValue {
                key: key.clone(),
                origin: Origin::Code,
                value: v.clone(),
                expected: expected.into(),
            };
            let int = |lo: u64, hi: u64| v.parse::<u64>().ok().filter(|x| (lo..=hi).contains(x));
            match k.as_str() {
                "library" => c.library = Some(v.trim().to_string()).filter(|s| !s.is_empty()),
                "interfaces" => {
                    c.interfaces = v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
                }
                "buffer_size" => {
                    c.buffer_size = parse_bytes(v)
                        .filter(|b| (65536..=(1 << 31) - 1).contains(b))
                        .ok_or_else(|| bad("a size from 64KiB to 2GiB"))?
                }
                "min_to_copy" => {
                    c.min_to_copy =
                        parse_bytes(v).filter(|b| *b <= 64 << 20).ok_or_else(|| bad("a size from 0 to 64MiB"))?
                }
                "snaplen" => c.snaplen = int(1514, 262_144).ok_or_else(|| bad("an integer 1514..=262144"))? as usize,
                "immediate" => {
                    c.immediate = match v.to_ascii_lowercase().as_str() {
                        "true" | "1" | "yes" | "on" => true,
                        "false" | "0" | "no" | "off" => false,
                        _ => return Err(bad("true or false")),
                    }
                }
                "timeout_ms" => c.timeout_ms = int(1, 1000).ok_or_else(|| bad("milliseconds 1..=1000"))? as u32,
                "spin_us" => c.spin_us = int(0, 10_000).ok_or_else(|| bad("microseconds 0..=10000"))? as u32,
                "queue_bytes" => {
                    tracing::warn!(
                        "npcap.queue_bytes is no longer used: the capture thread hands datagrams to the node \
                         directly (the capture ring, npcap.buffer_size, is the only buffer); remove it"
                    );
                }
                "ip_timeout_ms" => {
                    c.ip.timeout = Duration::from_millis(int(1, 600_000).ok_or_else(|| bad("milliseconds 1..=600000"))?)
                }
                "ip_max_datagrams" => {
                    c.ip.max_datagrams = int(1, 1 << 20).ok_or_else(|| bad("an integer 1..=1048576"))? as usize
                }
                "ip_max_buffered_bytes" => {
                    c.ip.max_buffered_bytes =
                        parse_bytes(v).filter(|b| *b >= 1 << 16).ok_or_else(|| bad("a size of at least 64KiB"))?
                }
                _ => {
                    return Err(ConfigError::UnknownKey {
                        key,
                        origin: Origin::Code,
                        known: KEYS.iter().map(|k| format!("npcap.{k}")).collect::<Vec<_>>().join(", "),
                    })
                }
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_errors() {
        let mut m = BTreeMap::new();
        m.insert("interfaces".to_string(), "eth0, lo".to_string());
        m.insert("immediate".to_string(), "on".to_string());
        m.insert("buffer_size".to_string(), "8MiB".to_string());
        let c = NpcapConfig::from_entries(&m).unwrap();
        assert_eq!(c.interfaces, vec!["eth0", "lo"]);
        assert!(c.immediate);
        assert_eq!(c.buffer_size, 8 << 20);
        m.insert("timeout_ms".to_string(), "0".to_string());
        let e = NpcapConfig::from_entries(&m).unwrap_err().to_string();
        assert!(e.contains("npcap.timeout_ms") && e.contains("1..=1000"), "{e}");
        let mut m = BTreeMap::new();
        m.insert("bufer_size".to_string(), "1".to_string());
        assert!(NpcapConfig::from_entries(&m).unwrap_err().to_string().contains("npcap.buffer_size"));
    }
}
