use std::net::Ipv4Addr;

/// Interface names are resolved on Linux only so far; elsewhere give the interface's IPv4
/// address in `network.interface`.
pub(crate) fn interface_ipv4(_name: &str) -> Option<Ipv4Addr> {
    None
}

/// Not enumerated on this platform yet.
pub(crate) fn interfaces() -> Vec<crate::InterfaceInfo> {
    Vec::new()
}

pub(crate) fn force_recv_buffer(_socket: &socket2::Socket, _bytes: usize) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "no SO_RCVBUFFORCE on this platform"))
}

/// Not available on this platform: kernel drops are not counted here.
pub(crate) fn socket_drops(_socket: &socket2::Socket) -> Option<u64> {
    None
}

/// Not available on this platform.
pub(crate) fn ip_reassembly_failures() -> Option<(u64, u64)> {
    None
}

/// Elsewhere a socket receives only the groups it joined already (no IP_MULTICAST_ALL).
pub(crate) fn receive_only_joined_groups(_socket: &socket2::Socket) {}
