//! The only OS-specific code of this crate. Every platform file exports the same names:
//! `interface_ipv4(name)`, `interfaces()`, `force_recv_buffer(socket, bytes)` and
//! `socket_drops(socket)`, `ip_reassembly_failures()`, `receive_only_joined_groups(socket)`,
//! `ENOBUFS` and `RecvBatch` (several datagrams per system call where the OS can).

#[cfg(target_os = "linux")]
#[path = "linux.rs"]
mod imp;

#[cfg(not(target_os = "linux"))]
#[path = "other.rs"]
mod imp;

pub(crate) use imp::{
    force_recv_buffer, interface_ipv4, interfaces, ip_reassembly_failures, receive_only_joined_groups, socket_drops,
    RecvBatch, ENOBUFS,
};
