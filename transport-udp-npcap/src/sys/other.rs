//! Linux, macOS and the other Unix systems: libpcap from the system's library path.

#![allow(unsafe_code)]

use crate::libpcap::{Device, Handle};
use std::net::Ipv4Addr;
use std::time::Duration;

pub(crate) type Timeval = libc::timeval;

pub(crate) fn timeval_micros(t: &Timeval) -> i64 {
    // Field widths vary (i64 on Linux x86_64, i32 `tv_usec` on macOS).
    #[allow(clippy::useless_conversion)]
    let (s, us) = (i64::from(t.tv_sec), i64::from(t.tv_usec));
    s * 1_000_000 + us
}

pub(crate) type Waitable = std::ffi::c_int;
pub(crate) const WAITABLE_FN: Option<&str> = Some("pcap_get_selectable_fd");

/// libpcap has had `pcap_get_selectable_fd` for decades; where it is missing, reads poll.
pub(crate) fn waitable_offered(_lib_version: &str) -> bool {
    true
}

pub(crate) const INSTALL_HINT: &str = "install libpcap (Debian/Ubuntu: `apt-get install libpcap0.8`, Fedora: \
     `dnf install libpcap`), or set npcap.library to the library's path";

pub(crate) const NO_DEVICES_HINT: &str =
    "check that network interfaces exist and that this process may list them (run `ip link`)";

pub(crate) const NO_LOOPBACK_DEVICE: &str =
    "no loopback capture device: the capture library lists no device with the loopback flag";

/// How the library is named in messages: its version string.
pub(crate) fn library_label(version: &str) -> String {
    version.to_string()
}

/// The family of a `sockaddr` from its first two bytes (BSDs start with a length byte).
pub(crate) fn sockaddr_family(b: [u8; 2]) -> u16 {
    if cfg!(any(
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "openbsd",
        target_os = "netbsd"
    )) {
        u16::from(b[1])
    } else {
        u16::from_ne_bytes(b)
    }
}

/// The process runs with privileges its invoker does not have: setuid, setgid or file
/// capabilities (`setcap cap_net_raw,...=eip`). Linux: the kernel's `AT_SECURE` (what glibc's
/// loader itself obeys, ignoring `LD_LIBRARY_PATH` and `LD_PRELOAD` paths); macOS and the BSDs:
/// `issetugid()`; elsewhere no such check is known and this says no.
pub(crate) fn privileged() -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: reads the auxiliary vector the kernel gave the process; no pointer involved.
        unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
    }
    #[cfg(any(
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "openbsd",
        target_os = "netbsd"
    ))]
    {
        // SAFETY: no arguments, reads process state.
        unsafe { libc::issetugid() != 0 }
    }
    #[cfg(not(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "openbsd",
        target_os = "netbsd"
    )))]
    {
        false
    }
}

/// Where to look for libpcap, in order.
pub(crate) fn library_candidates(explicit: Option<&str>) -> Vec<String> {
    if let Some(p) = explicit {
        return vec![p.to_string()];
    }
    let names: &[&str] = if cfg!(target_os = "macos") {
        &["libpcap.A.dylib", "/usr/lib/libpcap.A.dylib", "libpcap.dylib"]
    } else {
        // The runtime package installs only the versioned name; the -dev package adds the last.
        &["libpcap.so.1", "libpcap.so.0.8", "libpcap.so"]
    };
    names.iter().map(|s| (*s).to_string()).collect()
}

pub(crate) fn open_library(path: &str) -> Result<libloading::Library, libloading::Error> {
    // SAFETY: libpcap's initialisers only set up its own state.
    unsafe { libloading::Library::new(path) }
}

/// Reads return at once when nothing is captured (so a capture thread may spin briefly).
pub(crate) const NONBLOCKING_READS: bool = true;

/// Non-blocking reads plus our own wait (poll), so a capture thread notices filter changes and
/// shutdown even when no frame arrives (Linux's ring timeout does not fire on an idle link).
/// `_min_to_copy` is Npcap's; the ring's block timeout plays its part here.
pub(crate) fn prepare_reads(h: &mut Handle, _min_to_copy: Option<usize>) -> Result<(), String> {
    h.set_nonblocking()
}

/// libpcap's ring (TPACKET_V3) is one buffer for all processors: the size asked is the size
/// configured.
pub(crate) fn kernel_buffer_size(configured: usize) -> usize {
    configured
}

/// No "minimum to copy" in libpcap.
pub(crate) const MIN_TO_COPY_FN: Option<&str> = None;

/// Wakes a capture thread out of [`wait_readable`] (a pipe: Linux and macOS), so that a route
/// change is applied at once rather than after the next frame or the 100 ms housekeeping wait.
#[derive(Debug)]
pub(crate) struct Wakeup {
    read: libc::c_int,
    write: libc::c_int,
}

impl Wakeup {
    pub(crate) fn new() -> std::io::Result<Self> {
        let mut fds = [0 as libc::c_int; 2];
        // Both ends non-blocking (a blocked drain would stop the capture thread) and closed on
        // exec. Linux sets both atomically; macOS has no pipe2.
        #[cfg(target_os = "linux")]
        // SAFETY: `fds` has room for the two descriptors pipe2(2) writes.
        let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        #[cfg(not(target_os = "linux"))]
        // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
        let r = unsafe { libc::pipe(fds.as_mut_ptr()) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let me = Self { read: fds[0], write: fds[1] };
        #[cfg(not(target_os = "linux"))]
        for fd in fds {
            // SAFETY: descriptors just opened and owned by `me`; flags only.
            let ok = unsafe {
                let fl = libc::fcntl(fd, libc::F_GETFL);
                fl >= 0
                    && libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) == 0
                    && libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) == 0
            };
            if !ok {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(me)
    }

    /// Makes the thread's current or next wait return at once.
    pub(crate) fn wake(&self) {
        // A full pipe already holds a wake-up: EAGAIN is fine.
        // SAFETY: one byte from a valid buffer to our own open descriptor.
        let _ = unsafe { libc::write(self.write, [1u8].as_ptr().cast(), 1) };
    }

    fn drain(&self) {
        let mut buf = [0u8; 64];
        // SAFETY: reads into a local buffer of the length given, from our own descriptor.
        while unsafe { libc::read(self.read, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    }
}

impl Drop for Wakeup {
    fn drop(&mut self) {
        // SAFETY: both descriptors are ours and closed once.
        unsafe {
            libc::close(self.read);
            libc::close(self.write);
        }
    }
}

/// Waits until the capture has something to read, or `wake` is woken. The ring's own block
/// timeout bounds how long a frame waits in a partly filled block (`npcap.timeout_ms`), so
/// `_latency` needs no wake-up here: the wait ends after 100 ms at most, for the loop's
/// housekeeping. False when there is nothing to read (timed out or woken).
pub(crate) fn wait_readable(h: &Handle, _latency: Duration, wake: &Wakeup) -> bool {
    let timeout = Duration::from_millis(100);
    let Some(fd) = h.waitable().filter(|fd| *fd >= 0) else {
        // No selectable descriptor (rare platforms): poll the non-blocking handle gently.
        std::thread::sleep(Duration::from_millis(1));
        return true;
    };
    let mut pfd = [
        libc::pollfd { fd, events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: wake.read, events: libc::POLLIN, revents: 0 },
    ];
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: two valid pollfds; the descriptors belong to `h` and `wake`, open while borrowed.
    let n = unsafe { libc::poll(pfd.as_mut_ptr(), 2, ms) };
    if n > 0 && pfd[1].revents != 0 {
        wake.drain();
    }
    n > 0 && pfd[0].revents != 0
}

/// How a device is named in logs and `doctor`.
pub(crate) fn describe_device(d: &Device) -> String {
    d.name.clone()
}

/// Whether the `network.interface` / `npcap.interfaces` value `spec` names this device.
pub(crate) fn device_matches(spec: &str, d: &Device) -> bool {
    d.name == spec
}

/// Linux and macOS loop joined multicast back to capture on their own; nothing to kick.
pub(crate) fn cold_start(_groups: &[Ipv4Addr], _interface: Option<Ipv4Addr>) {}
