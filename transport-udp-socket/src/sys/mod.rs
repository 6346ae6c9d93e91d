//! The only OS-specific code of this crate. Every platform file exports the same names:
//! `interface_ipv4(name)`, `interfaces()`, `force_recv_buffer(socket, bytes)` and
//! `socket_drops(socket)`, `ip_reassembly_failures()`, `receive_only_joined_groups(socket)`,
//! `ENOBUFS` and `RecvBatch` (several datagrams per system call where the OS can), and for sending
//! `has_segmentation_offload(socket)`, `path_mtu(dest, interface)` and `send_batch(..)`.

#[cfg(target_os = "linux")]
#[path = "linux.rs"]
mod imp;

#[cfg(not(target_os = "linux"))]
#[path = "other.rs"]
mod imp;

pub(crate) use imp::{
    force_recv_buffer, has_segmentation_offload, interface_ipv4, interfaces, ip_reassembly_failures, path_mtu,
    receive_offload_buffers, receive_only_joined_groups, send_batch, socket_drops, RecvBatch, ENOBUFS,
};

/// What one [`send_batch`] call handed to the OS.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchSent {
    /// Datagrams (segments counted one each) and their bytes.
    pub datagrams: usize,
    pub bytes: usize,
    /// System calls made.
    pub calls: usize,
    /// Buffers sent with `UDP_SEGMENT` (several datagrams each).
    pub offload_buffers: usize,
}

/// Why a [`send_batch`] stopped.
#[derive(Debug)]
pub(crate) enum BatchError {
    /// The OS refused a segmentation offload buffer: send the rest without offload.
    Offload(std::io::Error),
    /// Any other failure (after `ENOBUFS` was waited out for `timeout`).
    Io(std::io::Error),
}

#[cfg(all(test, target_os = "linux"))]
pub(crate) use imp::refuse_offload;
