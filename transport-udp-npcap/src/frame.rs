//! Captured frame -> IPv4 packet, by link type, never by assumption. Pure: no pcap types, so
//! tests feed frames directly.
//!
//! | link type (DLT) | header | how the network protocol is found |
//! |---|---|---|
//! | `EN10MB` (1) | 14 bytes, then any number of 802.1Q / 802.1ad tags | EtherType |
//! | `LINUX_SLL` (113) | 16 bytes (Linux `any` device, libpcap < 1.10 style) | protocol at bytes 14..16 |
//! | `LINUX_SLL2` (276) | 20 bytes | protocol at bytes 0..2 |
//! | `NULL` (0) | 4 bytes, address family in host byte order (Npcap loopback, BSD lo0) | AF_INET = 2 |
//! | `LOOP` (108) | 4 bytes, address family in network byte order (OpenBSD) | AF_INET = 2 |
//! | `RAW` (12, 14, 101), `IPV4` (228) | none | the IP version nibble |

use std::fmt;
use std::net::Ipv4Addr;

/// Link types this decoder understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    /// `EN10MB` (1): Ethernet II, with up to two VLAN tags.
    Ethernet,
    /// `LINUX_SLL` (113): Linux "any" device, cooked header v1.
    LinuxSll,
    /// `LINUX_SLL2` (276): Linux cooked header v2.
    LinuxSll2,
    /// `NULL` (0): BSD loopback, address family in host byte order (Npcap's loopback adapter).
    Null,
    /// `LOOP` (108): OpenBSD loopback, address family in network byte order.
    Loop,
    /// `RAW` / `IPV4`: the IP packet without a link header.
    Raw,
}

impl LinkType {
    /// From the pcap DLT number; `None` for link types we cannot decode.
    pub fn from_dlt(dlt: i32) -> Option<Self> {
        Some(match dlt {
            1 => Self::Ethernet,
            113 => Self::LinuxSll,
            276 => Self::LinuxSll2,
            0 => Self::Null,
            108 => Self::Loop,
            12 | 14 | 101 | 228 => Self::Raw,
            _ => return None,
        })
    }
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_VLAN: [u16; 3] = [0x8100, 0x88a8, 0x9100];
const AF_INET: u32 = 2;

/// Why a frame was not decoded. Frames that are simply not IPv4 are [`FrameError::NotIpv4`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than its link header or than its IPv4 header / total length.
    Truncated,
    /// A valid frame of another protocol (ARP, IPv6, ...).
    NotIpv4,
    /// IPv4 header fields that cannot be right (bad IHL, total length below the header).
    BadIpv4,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Truncated => "truncated frame",
            Self::NotIpv4 => "not IPv4",
            Self::BadIpv4 => "malformed IPv4 header",
        })
    }
}

/// One IPv4 packet (possibly a fragment) found in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Packet<'a> {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address (a group, a broadcast or a unicast address).
    pub dst: Ipv4Addr,
    /// IP protocol number (17 = UDP).
    pub protocol: u8,
    /// IP identification: with source, destination and protocol it ties the fragments of one
    /// datagram together.
    pub identification: u16,
    /// Fragment offset in bytes.
    pub offset: usize,
    /// The MF flag: more fragments follow.
    pub more_fragments: bool,
    /// The IP payload (trailing link padding removed using the total length).
    pub payload: &'a [u8],
}

impl Ipv4Packet<'_> {
    /// Part of a fragmented datagram (MF set or a non-zero offset).
    pub fn is_fragment(&self) -> bool {
        self.more_fragments || self.offset != 0
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Finds the IPv4 packet in `frame` of link type `link`.
///
/// # Errors
/// See [`FrameError`].
pub fn decode(link: LinkType, frame: &[u8]) -> Result<Ipv4Packet<'_>, FrameError> {
    let ip = match link {
        LinkType::Ethernet => {
            let mut at = 12;
            let mut ty = be16(frame, at).ok_or(FrameError::Truncated)?;
            while ETHERTYPE_VLAN.contains(&ty) {
                at += 4;
                ty = be16(frame, at).ok_or(FrameError::Truncated)?;
            }
            if ty != ETHERTYPE_IPV4 {
                return Err(FrameError::NotIpv4);
            }
            &frame[at + 2..]
        }
        LinkType::LinuxSll => {
            if be16(frame, 14).ok_or(FrameError::Truncated)? != ETHERTYPE_IPV4 {
                return Err(FrameError::NotIpv4);
            }
            &frame[16..]
        }
        LinkType::LinuxSll2 => {
            if frame.len() < 20 {
                return Err(FrameError::Truncated);
            }
            if be16(frame, 0).ok_or(FrameError::Truncated)? != ETHERTYPE_IPV4 {
                return Err(FrameError::NotIpv4);
            }
            &frame[20..]
        }
        LinkType::Null | LinkType::Loop => {
            let fam: [u8; 4] = frame.get(..4).ok_or(FrameError::Truncated)?.try_into().expect("4 bytes");
            // NULL is host byte order of the capturing machine; accept both orders, as
            // Wireshark does, since files move between machines.
            let fam_le = u32::from_le_bytes(fam);
            let fam_be = u32::from_be_bytes(fam);
            let ok = match link {
                LinkType::Loop => fam_be == AF_INET,
                _ => fam_le == AF_INET || fam_be == AF_INET,
            };
            if !ok {
                return Err(FrameError::NotIpv4);
            }
            &frame[4..]
        }
        LinkType::Raw => frame,
    };
    parse_ipv4(ip)
}

fn parse_ipv4(ip: &[u8]) -> Result<Ipv4Packet<'_>, FrameError> {
    use etherparse::err::ipv4::{HeaderError, HeaderSliceError};
    // Raw links carry IPv6 too: classify by the version nibble before length checks.
    if ip.first().is_some_and(|b| b >> 4 != 4) {
        return Err(FrameError::NotIpv4);
    }
    let h = etherparse::Ipv4HeaderSlice::from_slice(ip).map_err(|e| match e {
        HeaderSliceError::Len(_) => FrameError::Truncated,
        HeaderSliceError::Content(HeaderError::UnexpectedVersion { .. }) => FrameError::NotIpv4,
        HeaderSliceError::Content(_) => FrameError::BadIpv4,
    })?;
    let ihl = h.slice().len();
    let total = usize::from(h.total_len());
    if total < ihl {
        return Err(FrameError::BadIpv4);
    }
    // Bytes after `total` are link-layer padding (Ethernet minimum frame size).
    let payload = ip.get(ihl..total).ok_or(FrameError::Truncated)?;
    Ok(Ipv4Packet {
        src: h.source_addr(),
        dst: h.destination_addr(),
        protocol: h.protocol().0,
        identification: h.identification(),
        offset: usize::from(h.fragments_offset().value()) * 8,
        more_fragments: h.more_fragments(),
        payload,
    })
}

/// A UDP datagram: ports and payload. The checksum is not verified: captures on the sending
/// side of veth/loopback carry unfinished checksums (offload), as the captures' README notes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpDatagram<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// The UDP payload, as long as the UDP length field says.
    pub payload: &'a [u8],
}

/// The UDP header at the start of an IP payload, whole or only its first fragment: source
/// port, destination port, and the length field (header included).
///
/// # Errors
/// [`FrameError::Truncated`] when shorter than 8 bytes; [`FrameError::BadIpv4`] when the length
/// field is below 8.
pub fn parse_udp_header(ip_payload: &[u8]) -> Result<(u16, u16, usize), FrameError> {
    if ip_payload.len() < 8 {
        return Err(FrameError::Truncated);
    }
    let len = usize::from(be16(ip_payload, 4).expect("len checked"));
    if len < 8 {
        return Err(FrameError::BadIpv4);
    }
    Ok((be16(ip_payload, 0).expect("len checked"), be16(ip_payload, 2).expect("len checked"), len))
}

/// Parses the UDP header of a whole (reassembled) IP payload.
///
/// # Errors
/// [`FrameError::Truncated`] when shorter than 8 bytes or than the UDP length field;
/// [`FrameError::BadIpv4`] when the length field is below 8.
pub fn parse_udp(ip_payload: &[u8]) -> Result<UdpDatagram<'_>, FrameError> {
    let (src_port, dst_port, end) = parse_udp_header(ip_payload)?;
    if ip_payload.len() < end {
        return Err(FrameError::Truncated);
    }
    Ok(UdpDatagram { src_port, dst_port, payload: &ip_payload[8..end] })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(payload: &[u8], id: u16, frag: u16) -> Vec<u8> {
        let total = (20 + payload.len()) as u16;
        let mut v = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 3, 17, 0, 0, 10, 77, 0, 1, 239, 0, 0, 1];
        v[2..4].copy_from_slice(&total.to_be_bytes());
        v[4..6].copy_from_slice(&id.to_be_bytes());
        v[6..8].copy_from_slice(&frag.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn every_link_type() {
        let ip = ipv4(&[1, 2, 3, 4, 5, 6, 7, 8, 9], 7, 0);
        let mut eth = vec![0u8; 12];
        eth.extend_from_slice(&[0x08, 0x00]);
        eth.extend_from_slice(&ip);
        eth.extend_from_slice(&[0; 10]); // Ethernet padding after the IP packet
        let mut vlan = vec![0u8; 12];
        vlan.extend_from_slice(&[0x81, 0x00, 0x00, 0x05, 0x88, 0xa8, 0x00, 0x06, 0x08, 0x00]);
        vlan.extend_from_slice(&ip);
        let mut sll = vec![0u8; 14];
        sll.extend_from_slice(&[0x08, 0x00]);
        sll.extend_from_slice(&ip);
        let mut sll2 = vec![0x08, 0x00];
        sll2.extend_from_slice(&[0; 18]);
        sll2.extend_from_slice(&ip);
        let mut null = 2u32.to_le_bytes().to_vec();
        null.extend_from_slice(&ip);
        let mut lp = 2u32.to_be_bytes().to_vec();
        lp.extend_from_slice(&ip);
        for (link, f) in [
            (LinkType::Ethernet, &eth),
            (LinkType::Ethernet, &vlan),
            (LinkType::LinuxSll, &sll),
            (LinkType::LinuxSll2, &sll2),
            (LinkType::Null, &null),
            (LinkType::Loop, &lp),
            (LinkType::Raw, &ip),
        ] {
            let p = decode(link, f).unwrap_or_else(|e| panic!("{link:?}: {e}"));
            assert_eq!(p.payload, &[1, 2, 3, 4, 5, 6, 7, 8, 9], "{link:?}");
            assert_eq!((p.identification, p.protocol, p.is_fragment()), (7, 17, false));
            assert_eq!(p.dst, Ipv4Addr::new(239, 0, 0, 1));
        }
    }

    #[test]
    fn fragments_and_errors() {
        let p = ipv4(&[0; 16], 9, 0x2000 | 185);
        let f = decode(LinkType::Raw, &p).unwrap();
        assert!(f.more_fragments && f.offset == 1480 && f.is_fragment());
        // ARP, IPv6, truncations, bad IHL.
        let mut arp = vec![0u8; 12];
        arp.extend_from_slice(&[0x08, 0x06, 0, 0]);
        assert_eq!(decode(LinkType::Ethernet, &arp), Err(FrameError::NotIpv4));
        assert_eq!(decode(LinkType::Raw, &[0x60, 0, 0, 0]), Err(FrameError::NotIpv4));
        for cut in 0..p.len() {
            assert!(decode(LinkType::Raw, &p[..cut]).is_err());
        }
        let mut bad = p.clone();
        bad[0] = 0x44;
        assert_eq!(decode(LinkType::Raw, &bad), Err(FrameError::BadIpv4));
        assert_eq!(decode(LinkType::Ethernet, &[0; 13]), Err(FrameError::Truncated));
        assert_eq!(LinkType::from_dlt(147), None);
    }

    #[test]
    fn udp_header() {
        let d = [0x12, 0x34, 0x36, 0xb2, 0, 11, 0, 0, b'a', b'b', b'c', 0xff];
        let u = parse_udp(&d).unwrap();
        assert_eq!((u.src_port, u.dst_port, u.payload), (0x1234, 14002, &b"abc"[..]));
        assert_eq!(parse_udp(&d[..7]), Err(FrameError::Truncated));
        assert_eq!(parse_udp(&[0, 1, 0, 2, 0, 4, 0, 0]), Err(FrameError::BadIpv4));
        assert_eq!(parse_udp(&[0, 1, 0, 2, 0, 40, 0, 0]), Err(FrameError::Truncated));
    }
}
