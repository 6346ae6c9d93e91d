//! The kernel BPF filter, as text for `pcap_compile`. Pure.
//!
//! `udp dst port N` only matches the *first* fragment of a fragmented datagram (the others carry
//! no UDP header), so non-first fragments are let through by their fragment offset:
//!
//! ```text
//! ip and (dst host G1 or dst host G2 ...) and ((udp and (dst port P1 or ...)) or (ip[6:2] & 0x1fff != 0))
//! ```
//! Direction (only incoming frames) is set on the capture handle, not in the filter.
//!
//! In network mode with eCAL's v2 topic-to-group mapping every topic's group lies in one range
//! (`base & mask`, `mask`): the filter passes the range as a whole (`dst net N mask M`), so
//! subscribing to another topic does not change it. Installing a new filter is not free: libpcap
//! on Linux drops every frame while it swaps filters, which would cost the topics already being
//! received a fragment (and so a message) now and then. Which groups are joined is checked per
//! frame in user space.

use std::net::Ipv4Addr;

/// Filter for datagrams to any of `ports` at any of `destinations`, and at any address of
/// `range` (network, mask) when given (destinations inside it are not listed).
pub fn bpf(destinations: &[Ipv4Addr], range: Option<(Ipv4Addr, Ipv4Addr)>, ports: &[u16]) -> String {
    if destinations.is_empty() || ports.is_empty() {
        // Nothing to listen for yet: port 0 is never a destination (an empty expression is
        // rejected by the compiler as matching nothing).
        return "udp and dst port 0".to_string();
    }
    let inside = |d: &Ipv4Addr| range.is_some_and(|(n, m)| u32::from(*d) & u32::from(m) == u32::from(n));
    let mut hosts: Vec<String> = range.map(|(n, m)| format!("dst net {n} mask {m}")).into_iter().collect();
    hosts.extend(destinations.iter().filter(|d| !inside(d)).map(|d| format!("dst host {d}")));
    let hosts = hosts.join(" or ");
    let ports = ports.iter().map(|p| format!("dst port {p}")).collect::<Vec<_>>().join(" or ");
    format!("ip and ({hosts}) and ((udp and ({ports})) or (ip[6:2] & 0x1fff != 0))")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text() {
        let f = bpf(&[Ipv4Addr::new(239, 0, 0, 1), Ipv4Addr::new(239, 0, 0, 6)], None, &[14000, 14002]);
        assert_eq!(
            f,
            "ip and (dst host 239.0.0.1 or dst host 239.0.0.6) and ((udp and (dst port 14000 or dst port 14002)) or (ip[6:2] & 0x1fff != 0))"
        );
        assert_eq!(bpf(&[], None, &[14000]), "udp and dst port 0");
    }

    #[test]
    fn joining_a_group_inside_the_topic_range_leaves_the_filter_as_it_was() {
        let range = Some((Ipv4Addr::new(239, 0, 0, 0), Ipv4Addr::new(255, 255, 255, 240)));
        let base = bpf(&[Ipv4Addr::new(239, 0, 0, 1)], range, &[14000, 14002]);
        assert_eq!(
            base,
            "ip and (dst net 239.0.0.0 mask 255.255.255.240) and ((udp and (dst port 14000 or dst port 14002)) or (ip[6:2] & 0x1fff != 0))"
        );
        let joined = [Ipv4Addr::new(239, 0, 0, 1), Ipv4Addr::new(239, 0, 0, 6), Ipv4Addr::new(239, 0, 0, 15)];
        assert_eq!(bpf(&joined, range, &[14000, 14002]), base);
        // A group outside the range is listed.
        let other = [Ipv4Addr::new(239, 0, 0, 1), Ipv4Addr::new(239, 0, 1, 1)];
        assert_eq!(
            bpf(&other, range, &[14000]),
            "ip and (dst net 239.0.0.0 mask 255.255.255.240 or dst host 239.0.1.1) and ((udp and (dst port 14000)) or (ip[6:2] & 0x1fff != 0))"
        );
    }
}
