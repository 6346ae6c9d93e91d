use std::net::{Ipv4Addr, SocketAddrV4};

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

/// Npcap honours the read timeout even when no packet arrives, so the capture stays blocking
/// there and this returns at once.
pub(crate) fn wait_readable(_cap: &pcap::Capture<pcap::Active>, _timeout: std::time::Duration) -> bool {
    true
}
