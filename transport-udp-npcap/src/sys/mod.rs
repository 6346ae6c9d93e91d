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
    prepare_reads, privileged, sockaddr_family, timeval_micros, wait_readable, waitable_offered, Timeval, Waitable,
    Wakeup, INSTALL_HINT, MIN_TO_COPY_FN, NONBLOCKING_READS, NO_DEVICES_HINT, NO_LOOPBACK_DEVICE, WAITABLE_FN,
};

/// Asks the CPU to start loading the frame that most likely follows `frame` in the capture
/// buffer (libpcap's ring block, Npcap's read buffer: frames lie one after the other, each
/// behind a header of a few dozen bytes): its headers and as many bytes as `frame` has, up to
/// 2 KiB (a frame of an Ethernet MTU; a longer one, an offload buffer crossing veth uncut, is
/// read in order and the hardware prefetcher follows), while this one is processed. The frames
/// were just written by the kernel, usually on another CPU, so each first touch is a cache miss.
/// A hint only: a prefetch never faults, whatever the address; on other architectures this is
/// a no-op.
#[inline]
#[allow(unsafe_code)] // the prefetch intrinsic only
pub(crate) fn prefetch_next_frame(frame: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        const LINE: usize = 64;
        const HEADERS: usize = 128; // the next frame's capture header and link / IP / UDP headers
        let start = frame.as_ptr().wrapping_add(frame.len());
        let reach = HEADERS + frame.len().min(2048);
        let mut off = 0;
        while off < reach {
            // SAFETY: a prefetch is a hint that never faults and reads nothing into the program;
            // the address is computed with wrapping arithmetic and never dereferenced.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(off).cast::<i8>()) };
            off += LINE;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = frame;
}
