//! Frames -> UDP payloads for the ports and destinations we listen on: link decode, IPv4
//! reassembly, UDP header, demultiplexing. Pure: the capture glue and the offline replay tests
//! drive the same code.
//!
//! **Direct placement.** A fragmented UDP datagram whose first IPv4 fragment comes first is
//! offered to its receiver ([`Route::begin`], the core's `DatagramSink::begin_datagram`): when the
//! receiver can place it, each next fragment in order is pushed from the ring straight to where
//! the eCAL message is assembled, and no IPv4 reassembly buffer is used. Anything else (a
//! fragment out of order, a duplicate, an overlap, the identification reused, a malformed
//! fragment) hands the lease back with the bytes so far and goes on through [`IpReassembler`]
//! with its policy and bounds (counted as `stream_fallbacks`); a datagram the receiver had
//! already dropped (counted there) is swallowed to its end instead. Streams have bounds of their
//! own, beside the IPv4 reassembler's and the same values: at most `max_datagrams` streams and
//! `max_buffered_bytes` declared UDP bytes (the oldest given up beyond), each at most `timeout`
//! old; a stream given up hands its lease back (`Route::release`), unfinished. The buffers the
//! leases hold are the receiver's, counted against its own limits.

use crate::frame::{decode, parse_udp, parse_udp_header, FrameError, Ipv4Packet, LinkType};
use crate::ip_reassembly::{
    IpKey, IpReassembler, IpReassemblyConfig, IpReassemblyStats, EXPIRY_EVERY, MAX_DATAGRAM_PAYLOAD,
};
use middleware_core::DatagramLease;
use std::borrow::Cow;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Instant;

const UDP: u8 = 17;

/// Counters of the decode path; every frame lands in exactly one of the `frames_*` buckets
/// or becomes (part of) a delivered or unwanted datagram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DemuxStats {
    /// Frames decoded.
    pub frames: u64,
    /// Valid frames of another protocol (ARP, IPv6, ...), normally kept out by the kernel filter.
    pub frames_not_ipv4: u64,
    /// Truncated frames or malformed IPv4 headers.
    pub frames_malformed: u64,
    /// IPv4 but not UDP (e.g. IGMP).
    pub frames_not_udp: u64,
    /// Reassembled datagrams with a bad UDP header.
    pub udp_malformed: u64,
    /// UDP datagrams to a port or destination nobody here listens on.
    pub udp_unwanted: u64,
    /// IPv4 fragments to an address nobody here listens at, dropped before reassembly (the
    /// kernel filter passes a topic-group range, of which only some groups are joined).
    pub fragments_unwanted: u64,
    /// UDP datagrams handed on.
    pub delivered: u64,
    /// UDP payload bytes handed on.
    pub delivered_bytes: u64,
    /// Fragmented UDP datagrams placed directly (their fragments pushed from the ring into the
    /// receiver's buffer, in order); counted in `delivered` too.
    pub streamed: u64,
    /// Directly placed datagrams that went back to IPv4 reassembly part-way (a fragment out of
    /// order, duplicated, overlapping or malformed).
    pub stream_fallbacks: u64,
    /// Directly placed datagrams dropped unfinished after the reassembly timeout.
    pub streams_expired: u64,
    /// Directly placed datagrams dropped unfinished, oldest first, to stay within the bounds.
    pub streams_evicted: u64,
}

/// Where the demultiplexer hands what it decodes: the capture thread's routes to the channels'
/// sinks, or a test's.
pub trait Route {
    /// Whether anyone listens at `destination`.
    fn wanted(&self, destination: SocketAddrV4) -> bool;
    /// Whether anyone listens at `address` on some port: asked of every IPv4 fragment, whose
    /// port only the first one carries. Default: yes.
    fn wanted_address(&self, address: std::net::Ipv4Addr) -> bool {
        let _ = address;
        true
    }
    /// A complete UDP datagram for a wanted destination, read at `now`.
    fn deliver(&mut self, d: Delivery<'_>, now: Instant);
    /// A fragmented datagram for a wanted destination, of `len` UDP payload bytes, `first` of
    /// them here: a lease to push the rest into, or `None` for the buffered way. Default: `None`.
    fn begin(
        &mut self,
        source: SocketAddr,
        destination: SocketAddrV4,
        first: &[u8],
        len: usize,
        now: Instant,
    ) -> Option<DatagramLease> {
        let _ = (source, destination, first, len, now);
        None
    }
    /// A lease whose datagram is complete.
    fn finish(&mut self, destination: SocketAddrV4, lease: DatagramLease, now: Instant) {
        let _ = (destination, lease, now);
    }
    /// An unfinished lease, its bytes so far appended to `out` (returns whether they were).
    fn abort(&mut self, destination: SocketAddrV4, lease: DatagramLease, out: &mut Vec<u8>) -> bool {
        let _ = (destination, lease, out);
        false
    }
    /// An unfinished lease whose datagram is given up (expired or evicted here): handed back so
    /// the receiver's partial message is as before it (a copy from elsewhere can still complete
    /// it).
    fn release(&mut self, destination: SocketAddrV4, lease: DatagramLease) {
        let _ = (destination, lease);
    }
}

/// A [`Route`] of two closures, without direct placement.
struct Closures<W, D>(W, D);

impl<W: Fn(SocketAddrV4) -> bool, D: FnMut(Delivery<'_>)> Route for Closures<W, D> {
    fn wanted(&self, destination: SocketAddrV4) -> bool {
        (self.0)(destination)
    }
    fn deliver(&mut self, d: Delivery<'_>, _: Instant) {
        (self.1)(d);
    }
}

/// A fragmented datagram being placed directly.
#[derive(Debug)]
struct Stream {
    /// `None`: the receiver dropped the datagram (counted there); its fragments are swallowed.
    lease: Option<DatagramLease>,
    destination: SocketAddrV4,
    udp_header: [u8; 8],
    /// IP payload bytes in all, as the UDP header says.
    udp_len: usize,
    /// IP payload offset of the next fragment expected.
    next: usize,
    created: Instant,
}

/// The streams in progress. The one begun last is kept beside the map, where the next fragment
/// of it (the usual case: a sender's fragments come back to back) is found without hashing;
/// the others are in the map, in the order they began ([`middleware_core::bounded::OldestFirst`]:
/// the previous last goes to its back when a newer one begins), so the oldest is found in O(1).
/// A key is in one place or the other, never both.
#[derive(Debug, Default)]
struct Streams {
    last: Option<(IpKey, Stream)>,
    others: middleware_core::bounded::OldestFirst<IpKey, Stream>,
}

impl Streams {
    fn len(&self) -> usize {
        self.others.len() + usize::from(self.last.is_some())
    }

    fn get_mut(&mut self, key: &IpKey) -> Option<&mut Stream> {
        match &mut self.last {
            Some((k, st)) if k == key => Some(st),
            _ => self.others.get_mut(key),
        }
    }

    fn remove(&mut self, key: &IpKey) -> Option<Stream> {
        if self.last.as_ref().is_some_and(|(k, _)| k == key) {
            return self.last.take().map(|(_, st)| st);
        }
        self.others.remove(key)
    }

    /// A new stream (its key in neither place): it becomes the last, the previous last goes
    /// to the map.
    fn insert(&mut self, key: IpKey, st: Stream) {
        if let Some((k, previous)) = self.last.replace((key, st)) {
            self.others.insert(k, previous);
        }
    }

    /// The stream begun first.
    fn oldest(&self) -> Option<IpKey> {
        self.others.front().map(|(k, _)| *k).or_else(|| self.last.as_ref().map(|(k, _)| *k))
    }

    fn iter(&self) -> impl Iterator<Item = (&IpKey, &Stream)> {
        self.last.iter().map(|(k, st)| (k, st)).chain(&self.others)
    }
}

/// One delivered datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery<'a> {
    /// The sender's IPv4 address and UDP port.
    pub source: SocketAddr,
    /// The group (or broadcast address) and port it was sent to.
    pub destination: SocketAddrV4,
    /// The UDP payload (an eCAL datagram), where it lies: in the ring, or in the reassembly buffer.
    pub payload: &'a [u8],
}

/// The pure receive pipeline of one capture device.
#[derive(Debug)]
pub struct Demux {
    link: LinkType,
    ip: IpReassembler,
    ip_config: IpReassemblyConfig,
    stats: DemuxStats,
    streams: Streams,
    /// Declared bytes of the streams in progress.
    stream_bytes: usize,
    /// When the streams are next checked for expiry (`None`: at the next fragment).
    stream_expiry_due: Option<Instant>,
    /// Leases of streams given up, to hand back at the next chance (a route is needed).
    released: Vec<(SocketAddrV4, DatagramLease)>,
}

impl Demux {
    /// A pipeline for frames of link type `link`, with IPv4 reassembly bounded by `config`.
    pub fn new(link: LinkType, config: IpReassemblyConfig) -> Self {
        Self {
            link,
            ip: IpReassembler::new(config.clone()),
            ip_config: config,
            stats: DemuxStats::default(),
            streams: Streams::default(),
            stream_bytes: 0,
            stream_expiry_due: None,
            released: Vec::new(),
        }
    }

    /// A snapshot of the decode counters.
    pub fn stats(&self) -> DemuxStats {
        self.stats
    }

    /// A snapshot of the IPv4 reassembly counters.
    pub fn ip_stats(&self) -> IpReassemblyStats {
        self.ip.stats()
    }

    /// IPv4 datagrams with fragments still missing (buffered or being placed directly).
    pub fn partial_ip_datagrams(&self) -> usize {
        self.ip.partial_datagrams() + self.streams.len()
    }

    /// Runs expiry of partial IP datagrams (also done while frames arrive), and hands the
    /// leases of expired streams back through `route`.
    pub fn expire_to(&mut self, now: Instant, route: &mut impl Route) {
        self.expire_streams(now);
        self.ip.expire(now);
        self.hand_back(route);
    }

    /// [`expire_to`](Self::expire_to) without a route: the leases of expired streams are
    /// dropped (their receiver forgets the partial messages when they expire there).
    pub fn expire(&mut self, now: Instant) {
        self.expire_streams(now);
        self.ip.expire(now);
        self.released.clear();
    }

    fn expire_streams(&mut self, now: Instant) {
        self.stream_expiry_due = now.checked_add(EXPIRY_EVERY);
        let timeout = self.ip_config.timeout;
        let old: Vec<IpKey> = self
            .streams
            .iter()
            .filter(|(_, st)| now.saturating_duration_since(st.created) >= timeout)
            .map(|(k, _)| *k)
            .collect();
        for k in &old {
            self.give_up(k);
            self.stats.streams_expired += 1;
        }
        if !old.is_empty() {
            tracing::debug!(count = old.len(), "directly placed datagrams expired unfinished");
        }
    }

    /// Ends a stream unfinished; its lease is handed back at the next chance.
    fn give_up(&mut self, key: &IpKey) {
        if let Some(st) = self.streams.remove(key) {
            self.stream_bytes -= st.udp_len;
            if let Some(lease) = st.lease {
                self.released.push((st.destination, lease));
            }
        }
    }

    fn hand_back(&mut self, route: &mut impl Route) {
        for (destination, lease) in self.released.drain(..) {
            route.release(destination, lease);
        }
    }

    /// Decodes one captured frame. `wanted(destination)` says whether anyone listens there;
    /// `deliver` gets each complete UDP datagram that is wanted. No direct placement.
    pub fn on_frame(
        &mut self,
        now: Instant,
        frame: &[u8],
        wanted: impl Fn(SocketAddrV4) -> bool,
        deliver: impl FnMut(Delivery<'_>),
    ) {
        self.on_frame_to(now, frame, &mut Closures(wanted, deliver));
    }

    /// Decodes one captured frame and hands what it completes, or begins, to `route`.
    pub fn on_frame_to(&mut self, now: Instant, frame: &[u8], route: &mut impl Route) {
        if !self.released.is_empty() {
            self.hand_back(route);
        }
        self.stats.frames += 1;
        let packet = match decode(self.link, frame) {
            Ok(p) => p,
            Err(FrameError::NotIpv4) => {
                self.stats.frames_not_ipv4 += 1;
                return;
            }
            Err(e) => {
                self.stats.frames_malformed += 1;
                tracing::debug!(error = %e, len = frame.len(), "malformed frame");
                return;
            }
        };
        if packet.protocol != UDP {
            self.stats.frames_not_udp += 1;
            return;
        }
        let (src, dst) = (packet.src, packet.dst);
        if packet.is_fragment() {
            if !route.wanted_address(dst) {
                self.stats.fragments_unwanted += 1;
                return;
            }
            if self.place(now, &packet, route) {
                return;
            }
        }
        let Some(ip_payload) = self.ip.push(now, &packet) else { return };
        match parse_udp(&ip_payload) {
            Ok(udp) => {
                let destination = SocketAddrV4::new(dst, udp.dst_port);
                if route.wanted(destination) {
                    self.stats.delivered += 1;
                    self.stats.delivered_bytes += udp.payload.len() as u64;
                    route.deliver(
                        Delivery {
                            source: SocketAddr::V4(SocketAddrV4::new(src, udp.src_port)),
                            destination,
                            payload: udp.payload,
                        },
                        now,
                    );
                } else {
                    self.stats.udp_unwanted += 1;
                }
            }
            Err(e) => {
                self.stats.udp_malformed += 1;
                tracing::debug!(error = %e, %src, "malformed UDP header");
            }
        }
        if let Cow::Owned(buf) = ip_payload {
            self.ip.recycle(buf);
        }
    }

    /// Direct placement of a fragment: true when it was taken (pushed into a stream, or began
    /// one); false when it goes to IPv4 reassembly (a stream it broke was handed back first).
    fn place(&mut self, now: Instant, p: &Ipv4Packet<'_>, route: &mut impl Route) -> bool {
        if self.stream_expiry_due.is_none_or(|due| now >= due) {
            // Given-up leases are handed back at the next frame (`expire` would drop them).
            self.expire_streams(now);
        }
        let key = IpKey { src: p.src, dst: p.dst, protocol: p.protocol, id: p.identification };
        let (start, len) = (p.offset, p.payload.len());
        let end = start + len;
        let well_formed = end <= MAX_DATAGRAM_PAYLOAD && (!p.more_fragments || (len > 0 && len % 8 == 0));
        if let Some(st) = self.streams.get_mut(&key) {
            // The next fragment in order, ending where the UDP header says it ends (or before,
            // with more to come): pushed where it belongs, no buffer in between.
            let continues =
                well_formed && start == st.next && if p.more_fragments { end < st.udp_len } else { end >= st.udp_len };
            if st.lease.is_none() {
                // A datagram its receiver dropped: swallowed to its end.
                if continues && !p.more_fragments {
                    self.give_up(&key);
                }
                return true;
            }
            if continues {
                self.ip.note_fragment();
                if let Some(lease) = st.lease.as_mut() {
                    lease.push(p.payload);
                }
                st.next = end;
                if !p.more_fragments {
                    let st = self.streams.remove(&key).expect("present");
                    self.stream_bytes -= st.udp_len;
                    self.stats.delivered += 1;
                    self.stats.delivered_bytes += (st.udp_len - 8) as u64;
                    self.stats.streamed += 1;
                    if let Some(lease) = st.lease {
                        route.finish(st.destination, lease, now);
                    }
                }
                return true;
            }
            // Back to the buffered way, with the bytes so far as one fragment at offset 0 (as
            // old as the stream: the timeout still counts from the first fragment).
            self.stats.stream_fallbacks += 1;
            tracing::trace!(src = %p.src, id = p.identification, start, expected = st.next, "IPv4 fragment out of order; buffered reassembly");
            let (destination, next, created, udp_header) = (st.destination, st.next, st.created, st.udp_header);
            let lease = st.lease.take().expect("checked above");
            let mut buf = self.ip.take_buffer();
            buf.extend_from_slice(&udp_header);
            if !route.abort(destination, lease, &mut buf) {
                // The receiver had dropped it: the rest is swallowed (the stream stays, leaseless).
                self.ip.recycle(buf);
                return true;
            }
            let st = self.streams.remove(&key).expect("present");
            self.stream_bytes -= st.udp_len;
            if buf.len() == next {
                self.ip.push_prefix(created, &Ipv4Packet { offset: 0, more_fragments: true, payload: &buf, ..*p });
            }
            self.ip.recycle(buf);
            return false;
        }
        // A first fragment of a datagram not seen before, for a destination listened on.
        if start != 0 || !p.more_fragments || !well_formed || len < 8 || self.ip.contains(&key) {
            return false;
        }
        let Ok(udp) = parse_udp_header(p.payload) else { return false };
        let destination = SocketAddrV4::new(p.dst, udp.1);
        if udp.2 <= len || !route.wanted(destination) {
            return false;
        }
        let udp_len = udp.2;
        if udp_len > self.ip_config.max_buffered_bytes {
            return false;
        }
        let source = SocketAddr::V4(SocketAddrV4::new(p.src, udp.0));
        let Some(lease) = route.begin(source, destination, &p.payload[8..], udp_len - 8, now) else { return false };
        // Room for it: the oldest streams are given up (their leases handed back unfinished at
        // the next frame).
        while self.streams.len() >= self.ip_config.max_datagrams.max(1)
            || self.stream_bytes + udp_len > self.ip_config.max_buffered_bytes
        {
            let Some(oldest) = self.streams.oldest() else { break };
            self.give_up(&oldest);
            self.stats.streams_evicted += 1;
            tracing::debug!(src = %oldest.src, id = oldest.id, "directly placed datagram evicted unfinished");
        }
        let udp_header: [u8; 8] = p.payload[..8].try_into().expect("length checked");
        self.ip.note_fragment();
        self.stream_bytes += udp_len;
        self.streams
            .insert(key, Stream { lease: Some(lease), destination, udp_header, udp_len, next: end, created: now });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::{ecal_frames, EcalRoute};
    use middleware_core::wire::MAX_DATAGRAM_LEN;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    fn message(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    /// Runs `frames` through a demux into an eCAL reassembler, placing directly or not.
    fn run(frames: &[Vec<u8>], direct: bool, cfg: IpReassemblyConfig) -> (Demux, EcalRoute) {
        let mut demux = Demux::new(LinkType::Ethernet, cfg);
        let mut route = EcalRoute::new(direct);
        let now = Instant::now();
        for f in frames {
            demux.on_frame_to(now, f, &mut route);
        }
        (demux, route)
    }

    #[test]
    fn in_order_fragments_go_from_the_frame_to_the_message_buffer() {
        // 1 MiB: an info datagram and 17 fragment datagrams: 16 of 65 507 bytes (45 frames each)
        // and one of 872 bytes (one frame, handed on where it lies).
        let msg = message(1 << 20);
        let frames = ecal_frames(&msg, MAX_DATAGRAM_LEN, 3, 1, 40_000);
        let (demux, route) = run(&frames, true, IpReassemblyConfig::default());
        assert_eq!(route.messages, vec![msg.clone()]);
        let st = demux.stats();
        assert_eq!((st.streamed, st.stream_fallbacks, st.delivered), (16, 0, 18));
        assert_eq!(route.ecal.stats().leased, 16);
        assert_eq!(demux.ip_stats().completed, 0, "no IPv4 reassembly buffer used");
        assert_eq!(
            demux.ip_stats().fragments,
            frames.len() as u64 - 2,
            "every fragment counted (not the info and the last)"
        );
        assert_eq!(
            (demux.partial_ip_datagrams(), route.ecal.partial_messages(), route.ecal.buffered_bytes()),
            (0, 0, 0)
        );
        // A whole message of 60 000 bytes: one UDP datagram of 41 fragments, placed directly.
        let small = message(60_000);
        let (demux, route) = run(&ecal_frames(&small, MAX_DATAGRAM_LEN, 4, 1, 40_000), true, Default::default());
        assert_eq!(route.messages, vec![small]);
        assert_eq!((demux.stats().streamed, route.ecal.stats().leased), (1, 1));
    }

    #[test]
    fn fragments_to_an_address_nobody_listens_at_are_dropped_before_reassembly() {
        // The kernel filter passes a whole topic-group range; only joined groups are wanted.
        let msg = message(200_000);
        let frames = ecal_frames(&msg, MAX_DATAGRAM_LEN, 3, 1, 40_000);
        for (only, delivered) in [(Ipv4Addr::new(239, 0, 0, 2), false), (Ipv4Addr::new(239, 0, 0, 1), true)] {
            let mut demux = Demux::new(LinkType::Ethernet, IpReassemblyConfig::default());
            let mut route = EcalRoute::new(true);
            route.only = Some(only);
            for f in &frames {
                demux.on_frame_to(Instant::now(), f, &mut route);
            }
            let (st, ip) = (demux.stats(), demux.ip_stats());
            if delivered {
                assert_eq!(route.messages, vec![msg.clone()]);
                assert_eq!(st.fragments_unwanted, 0);
            } else {
                assert!(route.messages.is_empty());
                // IPv4 flags and fragment offset (frame bytes 20..22): MF set or an offset.
                let fragments = frames.iter().filter(|f| u16::from_be_bytes([f[20], f[21]]) & 0x3fff != 0).count();
                assert!(fragments > 100, "{fragments}");
                assert_eq!(st.fragments_unwanted, fragments as u64, "{st:?}");
                assert_eq!(st.udp_unwanted, (frames.len() - fragments) as u64);
                assert_eq!((ip.fragments, demux.partial_ip_datagrams(), st.streamed), (0, 0, 0));
            }
        }
    }

    #[test]
    fn two_senders_fragments_interleaved_are_both_placed_directly() {
        // Two publishers' datagrams in flight at once, their frames alternating: each fragment
        // finds its stream whether it is the one begun last or the other.
        let (m1, m2) = (message(300_000), message(200_000));
        let (a, b) =
            (ecal_frames(&m1, MAX_DATAGRAM_LEN, 1, 100, 40_000), ecal_frames(&m2, MAX_DATAGRAM_LEN, 2, 900, 40_001));
        let mut set = Vec::new();
        for i in 0..a.len().max(b.len()) {
            set.extend(a.get(i).cloned());
            set.extend(b.get(i).cloned());
        }
        let (demux, mut route) = run(&set, true, IpReassemblyConfig::default());
        route.messages.sort_by_key(Vec::len);
        assert_eq!(route.messages, vec![m2, m1]);
        let st = demux.stats();
        assert_eq!((st.streamed, st.stream_fallbacks), (5 + 4, 0));
        assert_eq!((demux.partial_ip_datagrams(), route.ecal.partial_messages()), (0, 0));
    }

    #[test]
    fn fragments_out_of_order_duplicated_or_overlapping_fall_back_and_still_deliver() {
        let msg = message(200_000);
        let frames = ecal_frames(&msg, MAX_DATAGRAM_LEN, 3, 1, 40_000);
        // Swapped neighbours inside the second UDP datagram (frames 1..=45 are the first).
        let mut swapped = frames.clone();
        swapped.swap(50, 51);
        // A repeated fragment inside the third.
        let mut repeated = frames.clone();
        repeated.insert(100, frames[99].clone());
        // Reversed: no datagram's first fragment comes first, nothing is streamed.
        let mut reversed = frames.clone();
        reversed.reverse();
        for (name, set, streamed, fallbacks) in
            [("swapped", swapped, 3, 1), ("repeated", repeated, 3, 1), ("reversed", reversed, 0, 0)]
        {
            let (demux, route) = run(&set, true, IpReassemblyConfig::default());
            let (buffered_demux, buffered) = run(&set, false, IpReassemblyConfig::default());
            assert_eq!(route.messages, vec![msg.clone()], "{name}");
            assert_eq!(buffered.messages, route.messages, "{name}");
            let st = demux.stats();
            assert_eq!((st.streamed, st.stream_fallbacks), (streamed, fallbacks), "{name}");
            assert_eq!(st.delivered, buffered_demux.stats().delivered, "{name}");
            assert_eq!(demux.ip_stats().duplicates, buffered_demux.ip_stats().duplicates, "{name}");
            assert_eq!(route.ecal.stats().lease_aborted, fallbacks, "{name}");
            assert_eq!((route.ecal.partial_messages(), route.ecal.buffered_bytes()), (0, 0), "{name}");
        }
    }

    #[test]
    fn an_identification_reused_while_a_datagram_streams_starts_the_new_one() {
        // Message 1's first UDP datagram loses its last fragment; message 2 reuses the same IP
        // identifications: it is delivered whole, and message 1 never is.
        let (m1, m2) = (message(100_000), message(90_000));
        let mut a = ecal_frames(&m1, MAX_DATAGRAM_LEN, 1, 500, 40_000);
        a.remove(45); // the last frame of the first fragment datagram (frame 0 is the info)
        let b = ecal_frames(&m2, MAX_DATAGRAM_LEN, 2, 500, 40_000);
        let set: Vec<Vec<u8>> = a.into_iter().chain(b).collect();
        let (mut demux, mut route) = run(&set, true, IpReassemblyConfig::default());
        let (_, buffered) = run(&set, false, IpReassemblyConfig::default());
        assert_eq!(route.messages, vec![m2]);
        assert_eq!(buffered.messages, route.messages);
        assert!(demux.ip_stats().conflicts >= 1);
        // Message 1's partial state goes with the timeout, counted.
        let later = Instant::now() + Duration::from_secs(60);
        demux.expire(later);
        route.ecal.expire(later);
        assert_eq!((demux.partial_ip_datagrams(), route.ecal.partial_messages()), (0, 0));
        assert!(route.ecal.stats().expired >= 1);
    }

    #[test]
    fn streams_are_bounded_in_number_and_bytes_and_expire() {
        // First fragments only, of 10 UDP datagrams of one message: only the first is the next
        // fragment in order (a stream); the others go to IPv4 reassembly (at most 4 partial).
        let msg = message(600_000);
        let frames = ecal_frames(&msg, MAX_DATAGRAM_LEN, 9, 1, 40_000);
        let firsts: Vec<Vec<u8>> = frames.iter().skip(1).step_by(45).take(10).cloned().collect();
        let cfg = IpReassemblyConfig { max_datagrams: 4, ..Default::default() };
        let (mut demux, route) = run(&firsts, true, cfg);
        // Only the first datagram is the next fragment in order: the others go buffered.
        assert_eq!(demux.stats().streamed, 0);
        assert_eq!(route.ecal.stats().leased, 1);
        assert_eq!(demux.partial_ip_datagrams(), 1 + 4);
        demux.expire(Instant::now() + Duration::from_secs(60));
        assert_eq!(demux.partial_ip_datagrams(), 0);
        assert_eq!(demux.stats().streams_expired, 1);
        // Whole messages (each its own lease): the oldest streams are evicted beyond 4, and
        // beyond the byte bound.
        let whole: Vec<Vec<u8>> = (0..10u16)
            .map(|k| ecal_frames(&message(60_000), MAX_DATAGRAM_LEN, 0, 1000 + k, 40_000)[0].clone())
            .collect();
        let (demux, route) = run(&whole, true, cfg_bytes(4, 1 << 30));
        assert_eq!((demux.stats().streams_evicted, demux.partial_ip_datagrams()), (6, 4));
        assert_eq!(route.ecal.stats().leased, 10);
        let (demux, _) = run(&whole, true, cfg_bytes(100, 130_000));
        assert_eq!((demux.stats().streams_evicted, demux.partial_ip_datagrams()), (8, 2));
    }

    #[test]
    fn a_stream_given_up_hands_its_lease_back_so_a_later_copy_completes_the_message() {
        // The IPv4 timeout (1 s) is shorter than the eCAL one (5 s): the stream of the first
        // fragment datagram is given up while its partial message lives on.
        let msg = message(100_000);
        let frames = ecal_frames(&msg, MAX_DATAGRAM_LEN, 3, 1, 40_000);
        let mut demux = Demux::new(
            LinkType::Ethernet,
            IpReassemblyConfig { timeout: Duration::from_secs(1), ..Default::default() },
        );
        let mut route = EcalRoute::new(true);
        let t0 = Instant::now();
        // The info and the first frame of fragment 0: a stream, its lease out.
        demux.on_frame_to(t0, &frames[0], &mut route);
        demux.on_frame_to(t0, &frames[1], &mut route);
        assert_eq!(route.ecal.stats().leased, 1);
        // 2 s later the whole message comes again (from another capture device, say): the stale
        // stream is given up and its lease handed back, so the copy is placed and completes.
        let t1 = t0 + Duration::from_secs(2);
        for f in &frames {
            demux.on_frame_to(t1, f, &mut route);
        }
        assert_eq!(route.messages, vec![msg]);
        assert_eq!((demux.stats().streams_expired, route.ecal.stats().lease_aborted), (1, 1));
        assert_eq!((route.ecal.partial_messages(), route.ecal.buffered_bytes()), (0, 0));
    }

    fn cfg_bytes(max_datagrams: usize, max_buffered_bytes: usize) -> IpReassemblyConfig {
        IpReassemblyConfig { max_datagrams, max_buffered_bytes, ..Default::default() }
    }
}
