//! Bodies of the fuzz targets (`fuzz/`) for the capture path, kept in the library so ordinary
//! tests replay every crash input (`tests/fuzz_regressions.rs`). Input framing: see
//! `middleware_core::fuzzing::records`.

use crate::demux::{Delivery, Demux, Route};
use crate::frame::{Ipv4Packet, LinkType};
use crate::ip_reassembly::{IpReassembler, IpReassemblyConfig};
use middleware_core::fragment::{split, Outcome, Reassembler, ReassemblyConfig};
use middleware_core::fuzzing::records;
use middleware_core::DatagramLease;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

const LINKS: [LinkType; 6] =
    [LinkType::Ethernet, LinkType::LinuxSll, LinkType::LinuxSll2, LinkType::Null, LinkType::Loop, LinkType::Raw];

fn small_caps() -> IpReassemblyConfig {
    IpReassemblyConfig { timeout: Duration::from_millis(100), max_datagrams: 8, max_buffered_bytes: 256 << 10 }
}

/// Captured frames of the link type the first byte picks, through frame decoding, IPv4
/// reassembly (or direct placement) and UDP demux into eCAL reassembly, as a capture thread
/// and a node do. The control byte of each record advances the clock.
pub fn frames(data: &[u8]) {
    let Some((&link, rest)) = data.split_first() else { return };
    let caps = small_caps();
    let mut demux = Demux::new(LINKS[usize::from(link) % LINKS.len()], caps.clone());
    let ecal_caps = ReassemblyConfig { max_partial_messages: 8, max_buffered_bytes: 512 << 10, ..Default::default() };
    let mut route = EcalRoute::with_splitter(true, ecal_caps);
    let mut now = Instant::now();
    for (ctl, frame) in records(rest) {
        now += Duration::from_millis(u64::from(ctl));
        demux.on_frame_to(now, frame, &mut route);
        let ip = demux.ip_stats();
        assert!(ip.completed <= ip.fragments, "{ip:?}");
        assert!(demux.partial_ip_datagrams() <= 2 * caps.max_datagrams);
        // Lent buffers included: the eCAL bound holds.
        assert!(route.ecal.buffered_bytes() <= 512 << 10, "{} bytes", route.ecal.buffered_bytes());
    }
    let later = now + Duration::from_secs(3600);
    demux.expire_to(later, &mut route);
    route.ecal.expire(later);
    assert_eq!(demux.partial_ip_datagrams(), 0, "every partial datagram expires");
    assert_eq!((route.ecal.partial_messages(), route.ecal.buffered_bytes()), (0, 0), "everything expires");
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

/// Ethernet frames of `message` sent as eCAL datagrams of at most `max_datagram` bytes (message
/// id `ecal_id`) over UDP from 10.77.0.1:`src_port` to 239.0.0.1:14002, each UDP datagram cut
/// into IPv4 fragments of 1480 bytes (a 1500-byte MTU), IP identifications from `first_ip_id`
/// on: what a capture device hears from an eCAL publisher (for tests, benches and fuzzing).
pub fn ecal_frames(message: &[u8], max_datagram: usize, ecal_id: i32, first_ip_id: u16, src_port: u16) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let Some(pieces) = split(message, max_datagram, ecal_id) else { return out };
    for (k, piece) in pieces.enumerate() {
        let len = 8 + piece.header.len() + piece.body.len();
        let mut udp = Vec::with_capacity(len);
        udp.extend_from_slice(&src_port.to_be_bytes());
        udp.extend_from_slice(&14_002u16.to_be_bytes());
        udp.extend_from_slice(&(len as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&piece.header);
        udp.extend_from_slice(piece.body);
        let id = first_ip_id.wrapping_add(k as u16);
        let mut off = 0;
        while off < udp.len() {
            let end = (off + 1480).min(udp.len());
            out.push(ipv4_frame(id, off, end < udp.len(), &udp[off..end]));
            off = end;
        }
    }
    out
}

/// An Ethernet frame of one IPv4 packet (fragment) from 10.77.0.1 to 239.0.0.1.
pub fn ipv4_frame(id: u16, offset: usize, more: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
    f.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&(((offset / 8) as u16 & 0x1fff) | if more { 0x2000 } else { 0 }).to_be_bytes());
    f.extend_from_slice(&[1, 17, 0, 0, 10, 77, 0, 1, 239, 0, 0, 1]);
    f.extend_from_slice(payload);
    f
}

/// A [`Route`] into an eCAL [`Reassembler`], as a node's data channel does, collecting the
/// messages it completes; with `direct`, fragmented datagrams are placed through leases.
#[derive(Debug)]
pub struct EcalRoute {
    /// The eCAL reassembler.
    pub ecal: Reassembler,
    /// Messages completed (joined when split), in order.
    pub messages: Vec<Vec<u8>>,
    /// Whether to take leases ([`Route::begin`]).
    pub direct: bool,
    /// The only address listened at (`None`: every address).
    pub only: Option<std::net::Ipv4Addr>,
}

impl EcalRoute {
    /// A route with a default-bounded reassembler.
    pub fn new(direct: bool) -> Self {
        Self { ecal: Reassembler::new(ReassemblyConfig::default()), messages: Vec::new(), direct, only: None }
    }

    /// A route whose reassembler joins bytes 16..4096 of a message apart (as a node's data
    /// channel joins a payload apart; see `Reassembler::with_splitter`), bounded by `config`.
    pub fn with_splitter(direct: bool, config: ReassemblyConfig) -> Self {
        let splitter = |first: &[u8]| (first.len() >= 16).then_some(16..4096);
        Self { ecal: Reassembler::with_splitter(config, splitter), messages: Vec::new(), direct, only: None }
    }

    fn take(&mut self, o: Outcome<'_>) {
        match o {
            Outcome::Message(m) => self.messages.push(m.into_owned()),
            Outcome::Split(m) => self.messages.push(m.joined()),
            Outcome::Pending | Outcome::Dropped => {}
        }
    }
}

impl Route for EcalRoute {
    fn wanted(&self, d: SocketAddrV4) -> bool {
        self.wanted_address(*d.ip())
    }
    fn wanted_address(&self, address: std::net::Ipv4Addr) -> bool {
        self.only.is_none_or(|a| a == address)
    }
    fn deliver(&mut self, d: Delivery<'_>, now: Instant) {
        let o = self.ecal.on_datagram(now, d.source, d.payload);
        self.take(o);
    }
    fn begin(
        &mut self,
        source: SocketAddr,
        _: SocketAddrV4,
        first: &[u8],
        len: usize,
        now: Instant,
    ) -> Option<DatagramLease> {
        if self.direct {
            self.ecal.begin_lease(now, source, first, len)
        } else {
            None
        }
    }
    fn finish(&mut self, _: SocketAddrV4, lease: DatagramLease, now: Instant) {
        let o = self.ecal.finish_lease(now, lease);
        self.take(o);
    }
    fn abort(&mut self, _: SocketAddrV4, lease: DatagramLease, out: &mut Vec<u8>) -> bool {
        self.ecal.abort_lease(lease, Some(out))
    }
    fn release(&mut self, _: SocketAddrV4, lease: DatagramLease) {
        self.ecal.abort_lease(lease, None);
    }
}

/// Direct placement against the buffered way: a message (the first record) sent as eCAL
/// datagrams over IPv4 fragments, twice (the second time its bytes changed, with another eCAL
/// id and the same IP identifications: identification reuse across messages), and the frames mangled as the
/// control bytes of the following records say: swapped, repeated, dropped, an overlapping
/// fragment (consistent bytes), a fragment with a byte flipped after its original. Two
/// pipelines take the same frames, one placing directly, one buffering every datagram: they
/// must deliver the same messages, and every partial state expires.
pub fn direct_placement(data: &[u8]) {
    let mut recs = records(data);
    let Some((shape, message)) = recs.next() else { return };
    let max =
        (middleware_core::wire::HEADER_LEN + 1 + usize::from(shape) * 300).min(middleware_core::wire::MAX_DATAGRAM_LEN);
    let mut frames = ecal_frames(message, max, 7, 100, 40_000);
    let other: Vec<u8> = message.iter().map(|b| b ^ 0x55).collect();
    frames.extend(ecal_frames(&other, max, 8, 100, 40_000));
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut at = 0;
    for (ctl, arg) in recs {
        if at >= frames.len() {
            break;
        }
        let k = usize::from(arg.first().copied().unwrap_or(0));
        match ctl % 6 {
            0 => sent.push(frames[at].clone()),
            1 if at + 1 < frames.len() => {
                // Swapped with a later one.
                let j = at + 1 + k % (frames.len() - at - 1);
                frames.swap(at, j);
                sent.push(frames[at].clone());
            }
            2 => {
                sent.push(frames[at].clone());
                sent.push(frames[at].clone());
            }
            3 => {} // lost
            4 => {
                // The next fragment shifted 8 bytes back over its predecessor (same bytes
                // there when in order), then the original.
                sent.push(frames[at].clone());
                if let Some(prev) = at.checked_sub(1).map(|p| frames[p].clone()) {
                    if let Some(f) = shifted(&prev, &frames[at]) {
                        sent.push(f);
                    }
                }
            }
            _ => {
                sent.push(frames[at].clone());
                let mut f = frames[at].clone();
                let i = 34 + k % (f.len() - 34).max(1);
                if i < f.len() {
                    f[i] ^= 0x5a;
                }
                sent.push(f);
            }
        }
        at += 1;
    }
    sent.extend(frames[at.min(frames.len())..].iter().cloned());
    let cfg = IpReassemblyConfig::default();
    let now = Instant::now();
    let mut results = Vec::new();
    for direct in [false, true] {
        let mut demux = Demux::new(LinkType::Ethernet, cfg.clone());
        let mut route = EcalRoute::with_splitter(direct, ReassemblyConfig::default());
        for f in &sent {
            demux.on_frame_to(now, f, &mut route);
            assert!(demux.partial_ip_datagrams() <= 2 * cfg.max_datagrams);
        }
        if !direct {
            assert_eq!(demux.stats().streamed, 0);
        }
        let later = now + Duration::from_secs(3600);
        demux.expire_to(later, &mut route);
        route.ecal.expire(later);
        assert_eq!(demux.partial_ip_datagrams(), 0, "every partial datagram expires");
        assert_eq!((route.ecal.partial_messages(), route.ecal.buffered_bytes()), (0, 0), "everything expires");
        let mut m = route.messages;
        m.sort();
        results.push(m);
    }
    assert!(results[0] == results[1], "direct placement delivered other messages than buffering");
}

/// `f` with its IPv4 payload starting 8 bytes earlier: the previous fragment's last 8 bytes
/// (from `prev`, same datagram) in front. None unless `f` is a non-first fragment of `prev`'s
/// datagram following it directly.
fn shifted(prev: &[u8], f: &[u8]) -> Option<Vec<u8>> {
    let (ph, fh) = (prev.get(14..34)?, f.get(14..34)?);
    let off = |h: &[u8]| usize::from(u16::from_be_bytes([h[6], h[7]]) & 0x1fff) * 8;
    if ph[4..6] != fh[4..6] || off(fh) == 0 || off(ph) + (prev.len() - 34) != off(fh) {
        return None;
    }
    let more = fh[6] & 0x20 != 0;
    let mut payload = prev[prev.len() - 8..].to_vec();
    payload.extend_from_slice(&f[34..]);
    Some(ipv4_frame(u16::from_be_bytes([fh[4], fh[5]]), off(fh) - 8, more, &payload))
}
