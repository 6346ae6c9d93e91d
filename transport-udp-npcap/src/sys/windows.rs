//! Windows: Npcap, loaded from its own directory at run time.
//!
//! How Npcap differs from libpcap on Linux, and what this crate does about it:
//! * Location: `wpcap.dll` is in `System32\Npcap` (not on the search path); loaded by full path
//!   with its directory first on the search path so `Packet.dll` beside it resolves.
//! * Reads: non-blocking, so that a capture thread never depends on the library's read timeout
//!   (which Npcap fires even on an idle link, but other implementations of the wpcap API, such
//!   as Wine's over libpcap, do not: a blocking read there never returns while nothing matches
//!   the filter, and filter updates, statistics and shutdown starve). Between reads the thread
//!   waits on the capture's event (`pcap_getevent`, signalled once "min to copy" bytes are
//!   buffered, 16 000 by default, 0 with `npcap.immediate`) for at most `npcap.timeout_ms`, then
//!   reads whatever is buffered: the "delayed write" trade-off, bounded by that timeout as
//!   Npcap's own read timeout bounded it. Where the library has no event (the function is
//!   missing, or returns none, as Wine's does), the thread polls with a bounded sleep (1 ms).
//! * Buffer: `npcap.buffer_size` sizes the driver's kernel buffer (Npcap's default is 1 MiB).
//! * Direction: where Npcap refuses `pcap_setdirection` a warning is logged; frames this host
//!   sends to a group it joined reach the loopback adapter only after the cold start below.
//! * Many adapters: one thread per adapter, each waiting on its own adapter's event (then reading
//!   without blocking), so the 64-handle limit of `WaitForMultipleObjects` never applies.
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

/// The capture's event (`HANDLE`), from `pcap_getevent`.
pub(crate) type Waitable = *mut c_void;
pub(crate) const WAITABLE_FN: Option<&str> = Some("pcap_getevent");

/// Whether the library implements `pcap_getevent`: Npcap and WinPcap do. Other implementations
/// of the wpcap API may export the name as a stub that aborts the process (Wine's does), so
/// they are read by polling instead.
pub(crate) fn waitable_offered(lib_version: &str) -> bool {
    windows_rules::has_capture_event(lib_version)
}

const WAIT_FAILED: u32 = 0xFFFF_FFFF;

#[link(name = "kernel32")]
extern "system" {
    fn WaitForSingleObject(handle: *mut c_void, milliseconds: u32) -> u32;
}

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

/// Windows has no setuid or file capabilities: a program runs elevated only when its invoker
/// chose to run it so (UAC), with that invoker's own environment. Nothing to refuse.
pub(crate) fn privileged() -> bool {
    false
}

pub(crate) fn open_library(path: &str) -> Result<libloading::Library, libloading::Error> {
    use libloading::os::windows::{Library, LOAD_LIBRARY_SEARCH_SYSTEM32, LOAD_WITH_ALTERED_SEARCH_PATH};
    let flags =
        if windows_rules::is_full_path(path) { LOAD_WITH_ALTERED_SEARCH_PATH } else { LOAD_LIBRARY_SEARCH_SYSTEM32 };
    // SAFETY: wpcap.dll's initialisers only set up its own state.
    unsafe { Library::load_with_flags(path, flags) }.map(Into::into)
}

/// Npcap's kernel buffer for `npcap.buffer_size`: that size per processor (Npcap splits the
/// buffer into one segment per processor; see [`windows_rules::kernel_buffer_request`]).
pub(crate) fn kernel_buffer_size(configured: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let request = windows_rules::kernel_buffer_request(configured, cpus);
    tracing::debug!(configured, cpus, request, "Npcap kernel buffer: the configured size per processor segment");
    request
}

/// Npcap's "minimum to copy" setter.
pub(crate) const MIN_TO_COPY_FN: Option<&str> = Some("pcap_setmintocopy");

/// Non-blocking reads (see the module notes); how the thread waits between them is logged once.
/// Where the library refuses non-blocking mode, reads block for its read timeout as before
/// (the waits below then only add at most `npcap.timeout_ms`). In block mode, `min_to_copy`
/// (`npcap.min_to_copy`) sets how much the driver buffers before it signals the event: fewer
/// wake-ups under heavy traffic, the wait still bounded by `npcap.timeout_ms`.
pub(crate) fn prepare_reads(h: &mut Handle, min_to_copy: Option<usize>) -> Result<(), String> {
    if let Some(bytes) = min_to_copy {
        match h.set_min_to_copy(bytes) {
            Ok(()) => tracing::debug!(bytes, "Npcap min to copy set"),
            Err(e) => {
                tracing::info!(error = %e, bytes, "cannot set the capture's minimum to copy; the library's default applies")
            }
        }
    }
    if let Err(e) = h.set_nonblocking() {
        tracing::warn!(error = %e, "the capture library refuses non-blocking reads; reading blocking, bounded by its read timeout");
    }
    match h.waitable().filter(|e| !e.is_null()) {
        Some(_) => tracing::debug!("capture reads: non-blocking, waiting on the capture's event between reads"),
        None => tracing::info!(
            "capture reads: the capture library offers no event to wait on (pcap_getevent); \
             polling non-blocking reads with a 1 ms sleep"
        ),
    }
    Ok(())
}

/// Reads return at once when nothing is buffered.
pub(crate) const NONBLOCKING_READS: bool = true;

/// Nothing to wake here: [`wait_readable`] returns within `latency` (at most 100 ms; 2 ms with
/// the default `npcap.timeout_ms`), and a route change waits that long at most.
#[derive(Debug)]
pub(crate) struct Wakeup;

impl Wakeup {
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(Self)
    }

    pub(crate) fn wake(&self) {}
}

/// Waits for the capture's event at most `latency` (the longest a frame may wait in a partly
/// filled buffer), or sleeps 1 ms where there is no event; then the caller reads what is there.
pub(crate) fn wait_readable(h: &Handle, latency: Duration, _wake: &Wakeup) -> bool {
    let ms = latency.as_millis().clamp(1, 100) as u32;
    match h.waitable().filter(|e| !e.is_null()) {
        Some(event) => {
            // SAFETY: the event belongs to the handle, open while `h` is borrowed.
            if unsafe { WaitForSingleObject(event, ms) } == WAIT_FAILED {
                static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
                if !LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        error = %std::io::Error::last_os_error(),
                        "waiting on the capture's event failed; polling with a 1 ms sleep instead"
                    );
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            // Signalled or timed out alike: frames below "min to copy" are read after the wait.
            true
        }
        None => {
            std::thread::sleep(Duration::from_millis(1).min(latency));
            true
        }
    }
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
