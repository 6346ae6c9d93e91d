//! Windows: Npcap, loaded from its own directory at run time.
//!
//! How Npcap differs from libpcap on Linux, and what this crate does about it:
//! * Location: `wpcap.dll` is in `System32\Npcap` (not on the search path); loaded by full path
//!   with its directory first on the search path so `Packet.dll` beside it resolves.
//! * Reads: Npcap's read timeout fires even when no frame arrives, so each capture thread reads
//!   blocking; a read returns after `npcap.timeout_ms` at most (or at once with
//!   `npcap.immediate`, which also sets Npcap's "min to copy" to 0). Without immediate mode a
//!   read also returns once 16 000 bytes are buffered (Npcap's default min-to-copy): the
//!   "delayed write" trade-off, bounded by the timeout.
//! * Buffer: `npcap.buffer_size` sizes the driver's kernel buffer (Npcap's default is 1 MiB).
//! * Direction: where Npcap refuses `pcap_setdirection` a warning is logged; frames this host
//!   sends to a group it joined reach the loopback adapter only after the cold start below.
//! * Many adapters: one thread per adapter, each blocking in its own read, so the 64-handle
//!   limit of `WaitForMultipleObjects` never applies.
//! * Timestamps: `struct timeval` has 32-bit fields (`long` is 32-bit on Windows).

#![allow(unsafe_code)]

use super::windows_rules;
use crate::libpcap::Handle;
use std::ffi::{c_long, c_void};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

#[repr(C)]
pub(crate) struct Timeval {
    tv_sec: c_long,
    tv_usec: c_long,
}

pub(crate) fn timeval_micros(t: &Timeval) -> i64 {
    i64::from(t.tv_sec) * 1_000_000 + i64::from(t.tv_usec)
}

/// Unused: reads block for the read timeout instead of waiting on `pcap_getevent`.
pub(crate) type Waitable = *mut c_void;
pub(crate) const WAITABLE_FN: Option<&str> = None;

pub(crate) const INSTALL_HINT: &str = "install Npcap from https://npcap.com (WinPcap API-compatible mode \
     is not needed; check \"Support loopback traffic\" for local mode), or set npcap.library to wpcap.dll's path";

pub(crate) const NO_DEVICES_HINT: &str = "the Npcap driver may not be running: `sc query npcap` shows it, \
     `sc start npcap` (as administrator) starts it; reinstalling Npcap repairs a broken installation";

pub(crate) use windows_rules::{describe_device, device_matches, NO_LOOPBACK_DEVICE};

/// "Npcap 1.79" from "Npcap version 1.79, based on libpcap version 1.10.4".
pub(crate) fn library_label(version: &str) -> String {
    windows_rules::npcap_version(version).map_or_else(|| version.to_string(), |v| format!("Npcap {v}"))
}

pub(crate) fn sockaddr_family(b: [u8; 2]) -> u16 {
    u16::from_ne_bytes(b)
}

pub(crate) fn library_candidates(explicit: Option<&str>) -> Vec<String> {
    let root = std::env::var("SystemRoot").ok();
    windows_rules::library_candidates(explicit, root.as_deref())
}

pub(crate) fn open_library(path: &str) -> Result<libloading::Library, libloading::Error> {
    use libloading::os::windows::{Library, LOAD_LIBRARY_SEARCH_SYSTEM32, LOAD_WITH_ALTERED_SEARCH_PATH};
    let flags =
        if windows_rules::is_full_path(path) { LOAD_WITH_ALTERED_SEARCH_PATH } else { LOAD_LIBRARY_SEARCH_SYSTEM32 };
    // SAFETY: wpcap.dll's initialisers only set up its own state.
    unsafe { Library::load_with_flags(path, flags) }.map(Into::into)
}

/// Blocking reads: Npcap returns from each after the read timeout.
pub(crate) fn prepare_reads(_h: &mut Handle) -> Result<(), String> {
    Ok(())
}

/// The read itself waits (at most the read timeout), so there is nothing to wait for here.
/// Reads block (see the module notes): no spinning on them.
pub(crate) const NONBLOCKING_READS: bool = false;

pub(crate) fn wait_readable(_h: &Handle, _timeout: Duration) -> bool {
    true
}

/// Npcap's loopback adapter only sees local multicast once a socket has sent to the group with
/// loopback on: send one empty datagram (TTL 0, never leaves the host) to each group on port
/// 62000, as eCAL's udpcap does after every join.
pub(crate) fn cold_start(groups: &[Ipv4Addr], interface: Option<Ipv4Addr>) {
    let Ok(s) = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP)) else {
        return;
    };
    let _ = s.set_reuse_address(true);
    let _ = s.set_multicast_loop_v4(true);
    let _ = s.set_multicast_ttl_v4(0);
    if let Some(ifa) = interface {
        let _ = s.set_multicast_if_v4(&ifa);
    }
    let _ = s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 62000).into());
    for g in groups {
        let _ = s.join_multicast_v4(g, &interface.unwrap_or(Ipv4Addr::UNSPECIFIED));
        let _ = s.send_to(&[], &SocketAddrV4::new(*g, 62000).into());
    }
}
