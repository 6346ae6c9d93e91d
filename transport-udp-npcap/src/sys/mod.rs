//! Platform specifics of the capture path, one file per platform with the same exports:
//! where the capture library lives and how it is loaded, the C types whose layout differs
//! (`timeval`, `sockaddr`), how a capture thread waits for frames, device naming, and the
//! multicast cold start. `windows_rules` holds the Windows decisions as pure functions, compiled
//! on every platform for tests so that they run on Linux too.

#[cfg(windows)]
#[path = "windows.rs"]
mod imp;

#[cfg(not(windows))]
#[path = "other.rs"]
mod imp;

#[cfg(any(windows, test))]
pub(crate) mod windows_rules;

pub(crate) use imp::{
    cold_start, describe_device, device_matches, kernel_buffer_size, library_candidates, library_label, open_library,
    prepare_reads, sockaddr_family, timeval_micros, wait_readable, waitable_offered, Timeval, Waitable, Wakeup,
    INSTALL_HINT, MIN_TO_COPY_FN, NONBLOCKING_READS, NO_DEVICES_HINT, NO_LOOPBACK_DEVICE, WAITABLE_FN,
};
