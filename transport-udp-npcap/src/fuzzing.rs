//! Bodies of the fuzz targets (`fuzz/`) for the capture path, kept in the library so ordinary
//! tests replay every crash input (`tests/fuzz_regressions.rs`). Input framing: see
//! `middleware_core::fuzzing::records`.

use crate::demux::Demux;
use crate::frame::{Ipv4Packet, LinkType};
use crate::ip_reassembly::{IpReassembler, IpReassemblyConfig};
use middleware_core::fuzzing::records;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const LINKS: [LinkType; 6] =
    [LinkType::Ethernet, LinkType::LinuxSll, LinkType::LinuxSll2, LinkType::Null, LinkType::Loop, LinkType::Raw];

fn small_caps() -> IpReassemblyConfig {
    IpReassemblyConfig { timeout: Duration::from_millis(100), max_datagrams: 8, max_buffered_bytes: 256 << 10 }
}

/// Captured frames of the link type the first byte picks, through frame decoding, IPv4
/// reassembly and UDP demux, as a capture thread does. The control byte of each record
/// advances the clock.
pub fn frames(data: &[u8]) {
    let Some((&link, rest)) = data.split_first() else { return };
    let mut demux = Demux::new(LINKS[usize::from(link) % LINKS.len()], small_caps());
    let mut now = Instant::now();
    for (ctl, frame) in records(rest) {
        now += Duration::from_millis(u64::from(ctl));
        demux.on_frame(now, frame, |_| true, |d| assert!(d.payload.len() <= 65_535 - 8));
        let ip = demux.ip_stats();
        assert!(ip.completed <= ip.fragments, "{ip:?}");
    }
    demux.expire(now + Duration::from_secs(1));
}

/// IPv4 fragments described by the input (identification, offset, more-fragments, payload),
/// from two sources, into one reassembler with small caps: overlaps, duplicates, absurd
/// offsets, never-completed datagrams. Memory stays within the caps; a completed datagram is
/// never longer than IPv4 allows.
pub fn ip_fragments(data: &[u8]) {
    let cfg = small_caps();
    let mut r = IpReassembler::new(cfg.clone());
    let mut now = Instant::now();
    for (ctl, body) in records(data) {
        let Some((head, payload)) = body.split_at_checked(3.min(body.len())).filter(|(h, _)| h.len() == 3) else {
            continue;
        };
        now += Duration::from_millis(u64::from(ctl >> 4));
        let p = Ipv4Packet {
            src: Ipv4Addr::new(10, 0, 0, 1 + (ctl & 1)),
            dst: Ipv4Addr::new(239, 0, 0, 1),
            protocol: 17,
            identification: u16::from(ctl & 6),
            // 13-bit offset in 8-byte units, as the header carries it.
            offset: usize::from(u16::from_le_bytes([head[0], head[1]]) & 0x1fff) * 8,
            more_fragments: head[2] & 1 == 1,
            // An IPv4 header's 16-bit total length cannot describe more (the frame decoder
            // enforces it); a record may be longer, which no real packet can be.
            payload: &payload[..payload.len().min(crate::ip_reassembly::MAX_DATAGRAM_PAYLOAD)],
        };
        if let Some(d) = r.push(now, &p) {
            assert!(d.len() <= 65_535 - 20, "datagram of {} bytes", d.len());
        }
        assert!(r.partial_datagrams() <= cfg.max_datagrams, "{} partial", r.partial_datagrams());
        assert!(r.buffered_bytes() <= cfg.max_buffered_bytes, "{} bytes buffered", r.buffered_bytes());
    }
    r.expire(now + cfg.timeout * 2);
    assert_eq!((r.partial_datagrams(), r.buffered_bytes()), (0, 0), "everything expires");
}
