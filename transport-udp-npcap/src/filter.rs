//! The kernel BPF filter, as text for `pcap_compile`. Pure.
//!
//! `udp dst port N` only matches the *first* fragment of a fragmented datagram (the others carry
//! no UDP header), so non-first fragments are let through by their fragment offset:
//!
//! ```text
//! ip and (dst host G1 or dst host G2 ...) and ((udp and (dst port P1 or ...)) or (ip[6:2] & 0x1fff != 0))
//! ```
//! Direction (only incoming frames) is set on the capture handle, not in the filter.

use std::net::Ipv4Addr;

/// Filter for datagrams to any of `ports` at any of `destinations`.
pub fn bpf(destinations: &[Ipv4Addr], ports: &[u16]) -> String {
    if destinations.is_empty() || ports.is_empty() {
        // Nothing to listen for yet: port 0 is never a destination (an empty expression is
        // rejected by the compiler as matching nothing).
        return "udp and dst port 0".to_string();
    }
    let hosts = destinations.iter().map(|d| format!("dst host {d}")).collect::<Vec<_>>().join(" or ");
    let ports = ports.iter().map(|p| format!("dst port {p}")).collect::<Vec<_>>().join(" or ");
    format!("ip and ({hosts}) and ((udp and ({ports})) or (ip[6:2] & 0x1fff != 0))")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text() {
        let f = bpf(&[Ipv4Addr::new(239, 0, 0, 1), Ipv4Addr::new(239, 0, 0, 6)], &[14000, 14002]);
        assert_eq!(
            f,
            "ip and (dst host 239.0.0.1 or dst host 239.0.0.6) and ((udp and (dst port 14000 or dst port 14002)) or (ip[6:2] & 0x1fff != 0))"
        );
        assert_eq!(bpf(&[], &[14000]), "udp and dst port 0");
    }
}
