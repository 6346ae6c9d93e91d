//! IPv4 fragment reassembly in user space (RFC 791 §3.2), bounded. Pure: time is a parameter.
//!
//! Key: (source, destination, protocol, identification). Policy, decided and tested:
//! * fragments may arrive in any order; a non-last fragment must carry a multiple of 8 bytes;
//! * an exact duplicate (same offset, length and bytes) is dropped and counted; once a datagram
//!   completed, its key is forgotten (the identification is reused after 65 536 datagrams, at
//!   high rates within seconds), so a complete duplicate set delivers the same datagram again and
//!   the eCAL layer above drops it as a duplicate message;
//! * any other overlap (a teardrop-style attack, or the identification wrapped around and a new
//!   datagram reuses the key while an old one is incomplete) discards the old partial datagram
//!   and starts afresh with the new fragment (counted as `conflicts`): bytes of two datagrams
//!   are never spliced together, and the newer datagram still completes;
//! * a datagram whose last fragment disagrees with bytes already seen beyond its end is treated
//!   the same way;
//! * a partial datagram expires `timeout` after its first fragment (not its last: a trickle of
//!   fragments cannot keep it alive);
//! * limits: 65 515 bytes per datagram (the IPv4 maximum), `max_datagrams` partial datagrams and
//!   `max_buffered_bytes` in total; beyond, the least recently touched partial is evicted.
//!   Every drop is counted.

use crate::frame::Ipv4Packet;
use std::borrow::Cow;

// The maps keyed by IPv4 fragment identity, looked up for every fragment (here and in the
// demultiplexer's streams), are `middleware_core::bounded::OldestFirst`: foldhash, seeded per
// process, several times cheaper than std's SipHash on these small keys. Every such map is
// bounded (`ip_max_datagrams`, the stream bound), so crafted collisions cost at most a scan of
// that many.
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Largest IPv4 payload: 65 535 total length minus a 20-byte header.
pub const MAX_DATAGRAM_PAYLOAD: usize = 65_515;

/// Bounds of IPv4 reassembly: in time, in partial datagrams and in bytes held (`npcap.ip_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpReassemblyConfig {
    /// Default 5 s (what eCAL's udpcap uses; Linux uses 30 s, which the perf notes show makes
    /// overload collapse last far longer).
    pub timeout: Duration,
    /// Default 1024.
    pub max_datagrams: usize,
    /// Default 64 MiB.
    pub max_buffered_bytes: usize,
}

impl Default for IpReassemblyConfig {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(5), max_datagrams: 1024, max_buffered_bytes: 64 << 20 }
    }
}

/// IPv4 reassembly counters; monotonic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct IpReassemblyStats {
    /// Fragments received.
    pub fragments: u64,
    /// Datagrams completed from fragments.
    pub completed: u64,
    /// Fragments already received (same bytes at the same place): ignored.
    pub duplicates: u64,
    /// Overlaps and inconsistent fragments; the older partial datagram was discarded.
    pub conflicts: u64,
    /// Fragments beyond the IPv4 maximum size, or non-last fragments not a multiple of 8.
    pub malformed: u64,
    /// Partial datagrams dropped after `timeout` without completing.
    pub expired: u64,
    /// Partial datagrams dropped, oldest first, to stay within `max_datagrams` or
    /// `max_buffered_bytes` (a flood of never-completed fragments lands here).
    pub evicted: u64,
}

impl IpReassemblyStats {
    /// Partial datagrams that never completed.
    pub fn lost_datagrams(&self) -> u64 {
        self.conflicts + self.expired + self.evicted
    }
}

/// What ties IPv4 fragments together (RFC 791): source, destination, protocol, identification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpKey {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol number.
    pub protocol: u8,
    /// IP identification.
    pub id: u16,
}

#[derive(Debug)]
struct Partial {
    buf: Vec<u8>,
    /// Received byte ranges, sorted, non-overlapping, adjacent ones merged.
    ranges: Vec<(usize, usize)>,
    total: Option<usize>,
    created: Instant,
}

enum Fit {
    New,
    Duplicate,
    Conflict,
}

impl Partial {
    fn fit(&self, start: usize, end: usize, more: bool, bytes: &[u8]) -> Fit {
        if let Some(t) = self.total {
            if end > t || (!more && end != t) {
                return Fit::Conflict;
            }
        }
        if !more && self.ranges.last().is_some_and(|r| r.1 > end) {
            return Fit::Conflict;
        }
        for &(a, b) in &self.ranges {
            if end <= a || start >= b {
                continue;
            }
            // Overlap: a duplicate only if entirely inside already received bytes and equal.
            return if start >= a && end <= b && self.buf[start..end] == *bytes {
                Fit::Duplicate
            } else {
                Fit::Conflict
            };
        }
        Fit::New
    }

    fn insert(&mut self, start: usize, end: usize, more: bool, bytes: &[u8]) {
        if start == self.buf.len() {
            // The next bytes in order (the usual case): appended, no zero fill first.
            self.buf.reserve_exact(bytes.len());
            self.buf.extend_from_slice(bytes);
        } else {
            if self.buf.len() < end {
                // Exact growth keeps the capacity (what the limits count) at the datagram's size.
                self.buf.reserve_exact(end - self.buf.len());
                self.buf.resize(end, 0);
            }
            self.buf[start..end].copy_from_slice(bytes);
        }
        if !more {
            self.total = Some(end);
        }
        // The ranges are sorted, disjoint and never touching; the new one (checked disjoint by
        // `fit`) can only touch its two neighbours: merge in place, no allocation per fragment.
        let i = self.ranges.partition_point(|r| r.0 < start);
        self.ranges.insert(i, (start, end));
        if i + 1 < self.ranges.len() && self.ranges[i].1 == self.ranges[i + 1].0 {
            self.ranges[i].1 = self.ranges[i + 1].1;
            self.ranges.remove(i + 1);
        }
        if i > 0 && self.ranges[i - 1].1 == self.ranges[i].0 {
            self.ranges[i - 1].1 = self.ranges[i].1;
            self.ranges.remove(i);
        }
    }

    fn complete(&self) -> bool {
        self.total.is_some_and(|t| self.ranges.len() == 1 && self.ranges[0] == (0, t))
    }
}

/// Bounded IPv4 reassembly.
#[derive(Debug)]
pub struct IpReassembler {
    config: IpReassemblyConfig,
    /// Least recently touched first ([`middleware_core::bounded::OldestFirst`]): each fragment
    /// of a datagram moves it to the back, so eviction takes the front in O(1).
    partials: middleware_core::bounded::OldestFirst<IpKey, Partial>,
    buffered: usize,
    stats: IpReassemblyStats,
    pool: Vec<Vec<u8>>,
    /// When partials are next checked for expiry (`None`: at the next datagram).
    expiry_due: Option<Instant>,
}

/// How often partial datagrams (and directly placed streams) are checked for expiry while
/// fragments arrive: the core's period.
pub(crate) use middleware_core::fragment::EXPIRY_EVERY;

/// Buffers kept for reuse at most (each up to 64 KiB).
const POOL: usize = 64;

impl IpReassembler {
    /// An empty reassembler bounded by `config`.
    pub fn new(config: IpReassemblyConfig) -> Self {
        Self {
            config,
            partials: middleware_core::bounded::oldest_first(),
            buffered: 0,
            stats: IpReassemblyStats::default(),
            pool: Vec::new(),
            expiry_due: None,
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> IpReassemblyStats {
        self.stats
    }

    /// Partial datagrams held now.
    pub fn partial_datagrams(&self) -> usize {
        self.partials.len()
    }

    /// Bytes held by partial datagrams now (bounded by `max_buffered_bytes`).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Whether fragments of the datagram `key` are held.
    pub fn contains(&self, key: &IpKey) -> bool {
        self.partials.contains_key(key)
    }

    /// An empty buffer, from the pool when one is there (give it back with
    /// [`recycle`](Self::recycle)).
    pub fn take_buffer(&mut self) -> Vec<u8> {
        self.pool.pop().unwrap_or_default()
    }

    /// The bytes of a datagram so far, from its first fragment on (placed directly until a
    /// fragment came out of order), as one fragment at offset 0 that arrived at `first_seen`:
    /// its fragments were counted as they came, and its timeout runs from the first.
    pub(crate) fn push_prefix(&mut self, first_seen: Instant, p: &Ipv4Packet<'_>) {
        let _ = self.push(first_seen, p);
        self.stats.fragments -= 1;
    }

    /// Counts a fragment that went past this reassembler (placed directly).
    pub(crate) fn note_fragment(&mut self) {
        self.stats.fragments += 1;
    }

    /// Hands a completed datagram's buffer back for reuse.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.pool.len() < POOL && buf.capacity() >= 2048 && buf.capacity() <= MAX_DATAGRAM_PAYLOAD * 2 {
            buf.clear();
            self.pool.push(buf);
        }
    }

    fn release(&mut self, p: Partial) {
        self.buffered -= p.buf.capacity();
        self.recycle(p.buf);
    }

    /// Feeds one IPv4 packet; returns the whole IP payload when the datagram is complete
    /// (borrowed when it was not fragmented at all).
    pub fn push<'a>(&mut self, now: Instant, p: &Ipv4Packet<'a>) -> Option<Cow<'a, [u8]>> {
        if !p.is_fragment() {
            return Some(Cow::Borrowed(p.payload));
        }
        if self.expiry_due.is_none_or(|due| now >= due) {
            self.expire(now);
        }
        self.stats.fragments += 1;
        let (start, len) = (p.offset, p.payload.len());
        let end = start + len;
        if end > MAX_DATAGRAM_PAYLOAD || (p.more_fragments && len % 8 != 0) || (p.more_fragments && len == 0) {
            self.stats.malformed += 1;
            tracing::debug!(src = %p.src, id = p.identification, start, len, "malformed IPv4 fragment");
            return None;
        }
        let key = IpKey { src: p.src, dst: p.dst, protocol: p.protocol, id: p.identification };
        // The common case, a further fragment of a datagram in progress that fits and needs no
        // eviction: updated in place (one lookup; no removal and re-insertion per fragment).
        // `to_back`: the lookup itself marks the datagram as the most recently touched.
        if let Some(part) = self.partials.to_back(&key) {
            match part.fit(start, end, p.more_fragments, p.payload) {
                Fit::Duplicate => {
                    self.stats.duplicates += 1;
                    return None;
                }
                Fit::New
                    if self.buffered + end.saturating_sub(part.buf.capacity()) <= self.config.max_buffered_bytes =>
                {
                    let before = part.buf.capacity();
                    part.insert(start, end, p.more_fragments, p.payload);
                    self.buffered = self.buffered + part.buf.capacity() - before;
                    if !part.complete() {
                        return None;
                    }
                    let part = self.partials.remove(&key).expect("present");
                    self.buffered -= part.buf.capacity();
                    self.stats.completed += 1;
                    let total = part.total.expect("complete");
                    let mut buf = part.buf;
                    buf.truncate(total);
                    return Some(Cow::Owned(buf));
                }
                // A conflict, or growth past the byte limit: the general path below.
                Fit::New | Fit::Conflict => {}
            }
        }
        let mut part = match self.partials.remove(&key) {
            Some(old) => {
                self.buffered -= old.buf.capacity();
                match old.fit(start, end, p.more_fragments, p.payload) {
                    Fit::New => old,
                    Fit::Duplicate => {
                        self.stats.duplicates += 1;
                        self.buffered += old.buf.capacity();
                        self.partials.insert(key, old);
                        return None;
                    }
                    Fit::Conflict => {
                        self.stats.conflicts += 1;
                        tracing::debug!(src = %p.src, id = p.identification, start, end, "conflicting IPv4 fragment; partial datagram discarded");
                        self.recycle(old.buf);
                        self.new_partial(now)
                    }
                }
            }
            None => self.new_partial(now),
        };
        // Room for this partial at its final size (it grows to `end` now, at most 65 515).
        let need = part.buf.capacity().max(end);
        while self.partials.len() >= self.config.max_datagrams.max(1)
            || self.buffered + need > self.config.max_buffered_bytes
        {
            let Some((_, q)) = self.partials.pop_front() else { break };
            self.release(q);
            self.stats.evicted += 1;
        }
        part.insert(start, end, p.more_fragments, p.payload);
        if part.complete() {
            self.stats.completed += 1;
            let total = part.total.expect("complete");
            let mut buf = part.buf;
            buf.truncate(total);
            return Some(Cow::Owned(buf));
        }
        self.buffered += part.buf.capacity();
        self.partials.insert(key, part);
        None
    }

    fn new_partial(&mut self, now: Instant) -> Partial {
        let buf = self.pool.pop().unwrap_or_default();
        Partial { buf, ranges: Vec::new(), total: None, created: now }
    }

    /// Drops partial datagrams older than the timeout (counted from their first fragment).
    pub fn expire(&mut self, now: Instant) {
        self.expiry_due = now.checked_add(EXPIRY_EVERY);
        let timeout = self.config.timeout;
        let old: Vec<IpKey> = self
            .partials
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.created) >= timeout)
            .map(|(k, _)| *k)
            .collect();
        for k in old {
            if let Some(p) = self.partials.remove(&k) {
                self.release(p);
                self.stats.expired += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frags(payload: &[u8], mtu_payload: usize, id: u16) -> Vec<(usize, bool, Vec<u8>)> {
        let step = mtu_payload / 8 * 8;
        let mut v = Vec::new();
        let mut off = 0;
        while off < payload.len() {
            let end = (off + step).min(payload.len());
            v.push((off, end < payload.len(), payload[off..end].to_vec()));
            off = end;
        }
        let _ = id;
        v
    }

    fn pkt(off: usize, more: bool, data: &[u8], id: u16) -> Ipv4Packet<'_> {
        Ipv4Packet {
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: Ipv4Addr::new(239, 0, 0, 1),
            protocol: 17,
            identification: id,
            offset: off,
            more_fragments: more,
            payload: data,
        }
    }

    fn run(r: &mut IpReassembler, now: Instant, fs: &[(usize, bool, Vec<u8>)], id: u16) -> Vec<Vec<u8>> {
        fs.iter().filter_map(|(o, m, d)| r.push(now, &pkt(*o, *m, d, id)).map(|c| c.into_owned())).collect()
    }

    #[test]
    fn orders_and_duplicates() {
        let data: Vec<u8> = (0..65_507u32).map(|i| (i % 253) as u8).collect();
        let fs = frags(&data, 1480, 1);
        assert_eq!(fs.len(), 45);
        let mut r = IpReassembler::new(IpReassemblyConfig::default());
        let now = Instant::now();
        assert_eq!(run(&mut r, now, &fs, 1), vec![data.clone()]);
        let mut rev = fs.clone();
        rev.reverse();
        assert_eq!(run(&mut r, now, &rev, 2), vec![data.clone()]);
        let mut dup: Vec<_> = fs.iter().flat_map(|f| [f.clone(), f.clone()]).collect();
        dup.pop();
        assert_eq!(run(&mut r, now, &dup, 3), vec![data.clone()]);
        assert_eq!(r.stats().duplicates, 44);
        assert_eq!(r.partial_datagrams(), 0);
        assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn teardrop_overlap_never_splices() {
        let mut r = IpReassembler::new(IpReassemblyConfig::default());
        let now = Instant::now();
        assert!(r.push(now, &pkt(0, true, &[1; 24], 5)).is_none());
        // Overlapping fragment with different bytes: old partial discarded.
        assert!(r.push(now, &pkt(16, false, &[2; 16], 5)).is_none());
        assert_eq!(r.stats().conflicts, 1);
        // The remaining first fragment of the new datagram completes only the new one.
        let got = r.push(now, &pkt(0, true, &[3; 16], 5)).unwrap();
        assert_eq!(&got[..16], &[3; 16]);
        assert_eq!(&got[16..], &[2; 16]);
    }

    #[test]
    fn id_reuse_after_loss_starts_a_new_datagram() {
        let a: Vec<u8> = vec![0xaa; 3000];
        let b: Vec<u8> = vec![0xbb; 3000];
        let fa = frags(&a, 1480, 9);
        let fb = frags(&b, 1480, 9);
        let mut r = IpReassembler::new(IpReassemblyConfig::default());
        let now = Instant::now();
        // Datagram a loses its last fragment; b reuses the id.
        assert!(run(&mut r, now, &fa[..2], 9).is_empty());
        let got = run(&mut r, now, &fb, 9);
        assert_eq!(got, vec![b]);
        assert_eq!(r.stats().conflicts, 1);
    }

    #[test]
    fn limits_and_expiry() {
        let cfg = IpReassemblyConfig { max_datagrams: 4, max_buffered_bytes: 1 << 20, timeout: Duration::from_secs(5) };
        let mut r = IpReassembler::new(cfg);
        let t0 = Instant::now();
        for id in 0..100u16 {
            r.push(t0 + Duration::from_millis(id.into()), &pkt(0, true, &[0; 1480], id));
            assert!(r.partial_datagrams() <= 4);
        }
        assert_eq!(r.stats().evicted, 96);
        r.expire(t0 + Duration::from_secs(6));
        assert_eq!((r.partial_datagrams(), r.buffered_bytes()), (0, 0));
        assert_eq!(r.stats().expired, 4);
        // Beyond 65 515 bytes, or a non-last fragment not a multiple of 8.
        assert!(r.push(t0, &pkt(65_512, false, &[0; 8], 1)).is_none());
        assert!(r.push(t0, &pkt(0, true, &[0; 7], 2)).is_none());
        assert_eq!(r.stats().malformed, 2);
    }
}
