//! What the capture-based tests share: the real eCAL captures' UDP datagrams.
#![allow(dead_code)] // each test file uses its part

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// One UDP datagram of a capture.
pub struct Udp {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub ttl: u8,
    pub payload: Vec<u8>,
}

pub fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/captures").join(name)
}

/// The IPv4/UDP frames of a pcap capture with link type Ethernet (read with `pcap-file`).
pub fn read_udp(name: &str) -> Vec<Udp> {
    let file = std::fs::File::open(data(name)).unwrap_or_else(|e| panic!("missing test vector {name}: {e}"));
    let mut r = pcap_file::pcap::PcapReader::new(file).unwrap_or_else(|e| panic!("{name}: not a pcap file: {e}"));
    assert_eq!(r.header().datalink, pcap_file::DataLink::ETHERNET, "{name}: link type is not Ethernet");
    let mut out = Vec::new();
    while let Some(pkt) = r.next_packet() {
        let pkt = pkt.unwrap_or_else(|e| panic!("{name}: corrupt record: {e}"));
        let Ok(p) = etherparse::SlicedPacket::from_ethernet(&pkt.data) else { continue };
        let (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Udp(udp))) = (p.net, p.transport)
        else {
            continue;
        };
        assert!(!ip.is_payload_fragmented(), "{name}: unexpected IP fragment");
        let h = ip.header();
        out.push(Udp {
            src: SocketAddr::new(IpAddr::V4(h.source_addr()), udp.source_port()),
            dst: SocketAddr::new(IpAddr::V4(h.destination_addr()), udp.destination_port()),
            ttl: h.ttl(),
            payload: udp.payload().to_vec(),
        });
    }
    out
}
