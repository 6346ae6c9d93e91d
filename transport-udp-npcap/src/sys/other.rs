#![allow(unsafe_code)]

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Linux and macOS loop joined multicast back to capture on their own; nothing to kick.
pub(crate) fn cold_start(_groups: &[Ipv4Addr], _interface: Option<Ipv4Addr>) {}

/// Waits until the (non-blocking) capture has something to read, at most `timeout`.
pub(crate) fn wait_readable(cap: &pcap::Capture<pcap::Active>, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd { fd: cap.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd, count 1; the fd stays open while `cap` is borrowed.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n > 0
}
