//! Datagrams -> messages (SPEC §3.2), bounded.
//!
//! Key: (sender address, message id). Policy, decided and tested:
//! * fragments may come before the info datagram; they are kept (counted against the limits);
//! * a duplicate fragment index or a second info datagram is dropped, the partial state is kept
//!   ("first copy wins", as ecaludp);
//! * the message completes when the info was seen and all `count` fragments are present; the
//!   fragments are joined in index order and a size different from the info's total discards
//!   the whole message;
//! * a partial message untouched for `timeout` expires;
//! * the keys of completed messages are remembered for `timeout` (bounded), so late duplicates
//!   of an already delivered message are dropped instead of assembling it a second time;
//! * limits: a declared total above `max_message_len`, a fragment count that cannot describe the
//!   total, a fragment index at or above the count are rejected before anything is allocated;
//!   when a new partial message would exceed `max_partial_messages` or `max_buffered_bytes`,
//!   the least recently touched partial messages are evicted. Every drop is counted.
//!
//! Time is a parameter: nothing here reads a clock.

use crate::wire::{Datagram, DatagramRepr};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Reassembly bounds. Defaults are documented on each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReassemblyConfig {
    /// A partial message not touched for this long is dropped. Default 5 s (eCAL's value).
    pub timeout: Duration,
    /// Largest message accepted. Default 128 MiB.
    pub max_message_len: usize,
    /// Partial messages held at once (all senders). Default 256.
    pub max_partial_messages: usize,
    /// Bytes held in partial messages (all senders). Default 256 MiB.
    pub max_buffered_bytes: usize,
}

impl Default for ReassemblyConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_message_len: 128 << 20,
            max_partial_messages: 256,
            max_buffered_bytes: 256 << 20,
        }
    }
}

/// Counters, one per outcome. Monotonic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReassemblyStats {
    /// Messages delivered (whole datagrams and reassembled ones).
    pub messages: u64,
    /// Of those, messages that were reassembled from fragments.
    pub reassembled: u64,
    /// Datagrams with a bad header (magic, version, type, length).
    pub malformed: u64,
    /// Info datagrams declaring an impossible or too large message.
    pub rejected_too_large: u64,
    /// Fragments with an index outside the declared count, or larger than the declared total.
    pub rejected_fragment: u64,
    /// Duplicate fragments and info datagrams.
    pub duplicates: u64,
    /// Partial messages dropped after `timeout`.
    pub expired: u64,
    /// Partial messages evicted to stay within the limits.
    pub evicted: u64,
    /// Completed messages whose size differed from the declared total.
    pub size_mismatch: u64,
}

impl ReassemblyStats {
    /// Partial messages that were lost (never delivered) for any reason.
    pub fn lost_messages(&self) -> u64 {
        self.expired + self.evicted + self.size_mismatch
    }
}

/// Identity of a fragmented message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// Source address and port of the datagrams.
    pub sender: SocketAddr,
    /// The eCAL message id of the fragments.
    pub id: i32,
}

/// What one datagram produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// A complete message: borrowed for a whole datagram, owned when reassembled.
    Message(Cow<'a, [u8]>),
    /// Stored; more datagrams are needed.
    Pending,
    /// Dropped; the reason is counted in [`ReassemblyStats`].
    Dropped,
}

#[derive(Debug)]
struct Partial {
    info: Option<(u32, u32)>, // (count, total_len)
    /// Fragments `0..next` joined in order: in-order arrival costs one copy and, once the info
    /// datagram announced the total, a single allocation.
    head: Vec<u8>,
    next: u32,
    /// Fragments that arrived ahead of `next`, joined into `head` when their turn comes.
    ahead: BTreeMap<u32, Vec<u8>>,
    ahead_bytes: usize,
    last_touch: Instant,
}

impl Partial {
    fn new(now: Instant) -> Self {
        Self { info: None, head: Vec::new(), next: 0, ahead: BTreeMap::new(), ahead_bytes: 0, last_touch: now }
    }

    /// Memory this partial holds (what the limits count).
    fn cost(&self) -> usize {
        self.head.capacity() + self.ahead_bytes
    }

    fn has(&self, index: u32) -> bool {
        index < self.next || self.ahead.contains_key(&index)
    }

    fn fragment_count(&self) -> usize {
        self.next as usize + self.ahead.len()
    }

    fn payload_bytes(&self) -> usize {
        self.head.len() + self.ahead_bytes
    }

    /// Cost after inserting a fragment of `len` bytes at `index` (an upper bound).
    fn cost_with(&self, index: u32, len: usize) -> usize {
        if index == self.next {
            let need = self.head.len() + len + self.ahead_bytes;
            let cap =
                if need > self.head.capacity() { need.max(self.head.capacity() * 2) } else { self.head.capacity() };
            cap + self.ahead_bytes
        } else {
            self.cost() + len
        }
    }

    fn insert(&mut self, index: u32, body: &[u8]) {
        if index == self.next {
            self.head.extend_from_slice(body);
            self.next += 1;
            while let Some(f) = self.ahead.remove(&self.next) {
                self.ahead_bytes -= f.len();
                self.head.extend_from_slice(&f);
                self.next += 1;
            }
        } else {
            self.ahead_bytes += body.len();
            self.ahead.insert(index, body.to_vec());
        }
    }
}

/// Bounded reassembly of eCAL message fragments.
#[derive(Debug)]
pub struct Reassembler {
    config: ReassemblyConfig,
    partials: HashMap<FragKey, Partial>,
    buffered: usize,
    stats: ReassemblyStats,
    last_expire: Option<Instant>,
    /// Recently completed keys, oldest first, with a set for lookup.
    done_order: VecDeque<(FragKey, Instant)>,
    done: HashSet<FragKey>,
}

impl Reassembler {
    /// An empty reassembler with the bounds of `config`.
    pub fn new(config: ReassemblyConfig) -> Self {
        Self {
            config,
            partials: HashMap::new(),
            buffered: 0,
            stats: ReassemblyStats::default(),
            last_expire: None,
            done_order: VecDeque::new(),
            done: HashSet::new(),
        }
    }

    /// Completed keys remembered at most; 16 per allowed partial message.
    fn done_capacity(&self) -> usize {
        self.config.max_partial_messages.saturating_mul(16).max(64)
    }

    fn remember_done(&mut self, key: FragKey, now: Instant) {
        if self.done_order.len() >= self.done_capacity() {
            if let Some((old, _)) = self.done_order.pop_front() {
                self.done.remove(&old);
            }
        }
        if self.done.insert(key) {
            self.done_order.push_back((key, now));
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ReassemblyStats {
        self.stats
    }

    /// Partial messages held now.
    pub fn partial_messages(&self) -> usize {
        self.partials.len()
    }

    /// Fragment bytes held now.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Feeds one UDP payload received from `sender` at `now`.
    pub fn on_datagram<'a>(&mut self, now: Instant, sender: SocketAddr, datagram: &'a [u8]) -> Outcome<'a> {
        // Purge at most every 100 ms; cheap enough to call on every datagram.
        if self.last_expire.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_millis(100)) {
            self.expire(now);
        }
        let repr = match Datagram::new_checked(datagram).and_then(|d| DatagramRepr::parse(&d).map(|r| (d, r))) {
            Ok(v) => v,
            Err(e) => {
                self.stats.malformed += 1;
                tracing::debug!(%sender, error = %e, "malformed ecaludp datagram");
                return Outcome::Dropped;
            }
        };
        let (d, repr) = repr;
        match repr {
            DatagramRepr::Whole { .. } => {
                self.stats.messages += 1;
                Outcome::Message(Cow::Borrowed(d.into_body()))
            }
            DatagramRepr::FragmentInfo { id, count, total_len } => {
                self.on_info(now, FragKey { sender, id }, count, total_len)
            }
            DatagramRepr::Fragment { id, index, .. } => self.on_fragment(now, FragKey { sender, id }, index, d.body()),
        }
    }

    fn on_info(&mut self, now: Instant, key: FragKey, count: u32, total_len: u32) -> Outcome<'static> {
        if self.done.contains(&key) {
            self.stats.duplicates += 1;
            return Outcome::Dropped;
        }
        let total = total_len as usize;
        // Every fragment carries at least one byte and at most a maximal datagram's worth.
        let plausible = count >= 1
            && total >= count as usize
            && (count as usize).saturating_mul(crate::wire::MAX_DATAGRAM_LEN) >= total;
        if total > self.config.max_message_len || !plausible {
            self.stats.rejected_too_large += 1;
            tracing::debug!(sender = %key.sender, id = key.id, count, total_len, "rejected fragmentation info");
            self.take(&key);
            return Outcome::Dropped;
        }
        let mut p = self.take(&key).unwrap_or_else(|| Partial::new(now));
        p.last_touch = now;
        if p.info.is_some() {
            self.stats.duplicates += 1;
            self.put(key, p);
            return Outcome::Pending;
        }
        p.info = Some((count, total_len));
        // Fragments that arrived early and do not fit the declared shape are dropped now.
        let bad: Vec<u32> = p.ahead.keys().copied().filter(|&i| i >= count).collect();
        for i in bad {
            if let Some(f) = p.ahead.remove(&i) {
                p.ahead_bytes -= f.len();
                self.stats.rejected_fragment += 1;
            }
        }
        if p.next > count || p.payload_bytes() > total {
            self.stats.size_mismatch += 1;
            return Outcome::Dropped;
        }
        // Reserve the whole message now (counted against the limits): one allocation in total.
        let reserve = total - p.head.len();
        if !self.make_room(p.head.len() + reserve + p.ahead_bytes) || p.head.try_reserve_exact(reserve).is_err() {
            self.stats.rejected_too_large += 1;
            tracing::debug!(sender = %key.sender, id = key.id, total, "message larger than the reassembly budget; dropped");
            return Outcome::Dropped;
        }
        self.put(key, p);
        self.try_complete(key)
    }

    fn on_fragment<'a>(&mut self, now: Instant, key: FragKey, index: u32, body: &[u8]) -> Outcome<'a> {
        if self.done.contains(&key) {
            self.stats.duplicates += 1;
            return Outcome::Dropped;
        }
        let mut p = self.take(&key).unwrap_or_else(|| Partial::new(now));
        p.last_touch = now;
        let cap = match p.info {
            Some((count, _)) if index >= count => {
                self.stats.rejected_fragment += 1;
                self.put(key, p);
                return Outcome::Dropped;
            }
            Some((_, total)) => total as usize,
            None => self.config.max_message_len,
        };
        if p.has(index) {
            self.stats.duplicates += 1;
            self.put(key, p);
            return Outcome::Pending;
        }
        if p.payload_bytes() + body.len() > cap {
            self.stats.rejected_fragment += 1;
            tracing::debug!(sender = %key.sender, id = key.id, index, "fragment exceeds declared size");
            self.put(key, p);
            return Outcome::Dropped;
        }
        if !self.make_room(p.cost_with(index, body.len())) {
            self.stats.rejected_fragment += 1;
            return Outcome::Dropped;
        }
        p.insert(index, body);
        self.put(key, p);
        self.try_complete(key)
    }

    fn try_complete<'a>(&mut self, key: FragKey) -> Outcome<'a> {
        let Some(p) = self.partials.get(&key) else {
            return Outcome::Dropped;
        };
        let Some((count, total)) = p.info else {
            return Outcome::Pending;
        };
        if p.fragment_count() < count as usize {
            return Outcome::Pending;
        }
        let p = self.take(&key).expect("present");
        self.remember_done(key, p.last_touch);
        if p.head.len() != total as usize || !p.ahead.is_empty() {
            self.stats.size_mismatch += 1;
            tracing::debug!(sender = %key.sender, id = key.id, got = p.payload_bytes(), declared = total, "reassembled size mismatch");
            return Outcome::Dropped;
        }
        self.stats.messages += 1;
        self.stats.reassembled += 1;
        Outcome::Message(Cow::Owned(p.head))
    }

    /// Removes a partial from the table (and its cost from the total).
    fn take(&mut self, key: &FragKey) -> Option<Partial> {
        let p = self.partials.remove(key)?;
        self.buffered -= p.cost();
        Some(p)
    }

    fn put(&mut self, key: FragKey, p: Partial) {
        self.buffered += p.cost();
        self.partials.insert(key, p);
    }

    /// Evicts least recently touched partials until `extra` more bytes and one more partial fit.
    /// Returns false when even an empty table could not take `extra` bytes.
    fn make_room(&mut self, extra: usize) -> bool {
        if extra > self.config.max_buffered_bytes {
            return false;
        }
        while self.partials.len() >= self.config.max_partial_messages.max(1)
            || self.buffered + extra > self.config.max_buffered_bytes
        {
            let Some(oldest) = self.partials.iter().min_by_key(|(_, p)| p.last_touch).map(|(k, _)| *k) else {
                break;
            };
            self.take(&oldest);
            self.stats.evicted += 1;
            tracing::debug!(sender = %oldest.sender, id = oldest.id, "evicted partial message to stay within limits");
        }
        true
    }

    /// Drops partial messages untouched for longer than the timeout.
    pub fn expire(&mut self, now: Instant) {
        self.last_expire = Some(now);
        let timeout = self.config.timeout;
        while let Some(&(key, t)) = self.done_order.front() {
            if now.saturating_duration_since(t) < timeout {
                break;
            }
            self.done_order.pop_front();
            self.done.remove(&key);
        }
        let before = self.partials.len();
        let mut freed = 0;
        self.partials.retain(|_, p| {
            let keep = now.saturating_duration_since(p.last_touch) < timeout;
            if !keep {
                freed += p.cost();
            }
            keep
        });
        let n = before - self.partials.len();
        if n > 0 {
            self.buffered -= freed;
            self.stats.expired += n as u64;
            tracing::debug!(count = n, bytes = freed, "partial messages expired");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fragment::split;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([10, 77, 0, 1], p))
    }

    fn datagrams(msg: &[u8], max: usize, id: i32) -> Vec<Vec<u8>> {
        split(msg, max, id).unwrap().map(|p| [&p.header[..], p.body].concat()).collect()
    }

    fn feed(r: &mut Reassembler, now: Instant, from: SocketAddr, dgs: &[Vec<u8>]) -> Vec<Vec<u8>> {
        dgs.iter()
            .filter_map(|d| match r.on_datagram(now, from, d) {
                Outcome::Message(m) => Some(m.into_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn whole_message_is_borrowed() {
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let d = &datagrams(b"hello", 65507, 0)[0];
        assert_eq!(r.on_datagram(Instant::now(), addr(1), d), Outcome::Message(Cow::Borrowed(b"hello")));
    }

    #[test]
    fn in_order_reversed_and_info_last() {
        let msg: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let dgs = datagrams(&msg, 1000, 42);
        let now = Instant::now();
        let mut r = Reassembler::new(ReassemblyConfig::default());
        assert_eq!(feed(&mut r, now, addr(1), &dgs), vec![msg.clone()]);
        // The same message id again within the timeout is a late duplicate.
        assert!(feed(&mut r, now, addr(1), &dgs).is_empty());
        assert_eq!(r.stats().duplicates, dgs.len() as u64);
        let mut rev = datagrams(&msg, 1000, 43);
        rev.reverse();
        assert_eq!(feed(&mut r, now, addr(1), &rev), vec![msg.clone()]);
        // After the timeout the id may be reused.
        r.expire(now + Duration::from_secs(5));
        assert_eq!(feed(&mut r, now + Duration::from_secs(5), addr(1), &dgs), vec![msg.clone()]);
        assert_eq!(r.partial_messages(), 0);
        assert_eq!(r.buffered_bytes(), 0);
        assert_eq!(r.stats().reassembled, 3);
    }

    #[test]
    fn senders_do_not_mix() {
        let a = vec![1u8; 5000];
        let b = vec![2u8; 5000];
        let da = datagrams(&a, 1000, 7);
        let db = datagrams(&b, 1000, 7); // same id, different sender port
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let now = Instant::now();
        let mut out = Vec::new();
        for (x, y) in da.iter().zip(&db) {
            out.extend(feed(&mut r, now, addr(1), std::slice::from_ref(x)));
            out.extend(feed(&mut r, now, addr(2), std::slice::from_ref(y)));
        }
        assert_eq!(out, vec![a, b]);
    }

    #[test]
    fn duplicates_are_dropped_and_counted() {
        let msg = vec![9u8; 3000];
        let dgs = datagrams(&msg, 1000, 1);
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let now = Instant::now();
        let doubled: Vec<_> = dgs[..dgs.len() - 1].iter().flat_map(|d| [d.clone(), d.clone()]).collect();
        assert!(feed(&mut r, now, addr(1), &doubled).is_empty());
        assert_eq!(feed(&mut r, now, addr(1), &dgs[dgs.len() - 1..]), vec![msg]);
        assert_eq!(r.stats().duplicates, (dgs.len() - 1) as u64);
    }

    #[test]
    fn expiry_frees_everything() {
        let dgs = datagrams(&vec![1u8; 5000], 1000, 3);
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let t0 = Instant::now();
        assert!(feed(&mut r, t0, addr(1), &dgs[..3]).is_empty());
        assert_eq!(r.partial_messages(), 1);
        r.expire(t0 + Duration::from_millis(4900));
        assert_eq!(r.partial_messages(), 1);
        r.expire(t0 + Duration::from_secs(5));
        assert_eq!(r.partial_messages(), 0);
        assert_eq!(r.buffered_bytes(), 0);
        assert_eq!(r.stats().expired, 1);
    }

    #[test]
    fn absurd_declarations_allocate_nothing() {
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let now = Instant::now();
        // 4 GiB total.
        let info = DatagramRepr::FragmentInfo { id: 1, count: 70_000, total_len: u32::MAX }.to_bytes();
        assert_eq!(r.on_datagram(now, addr(1), &info), Outcome::Dropped);
        // 2^31 fragments for 100 bytes.
        let info = DatagramRepr::FragmentInfo { id: 2, count: 1 << 31, total_len: 100 }.to_bytes();
        assert_eq!(r.on_datagram(now, addr(1), &info), Outcome::Dropped);
        // zero fragments.
        let info = DatagramRepr::FragmentInfo { id: 3, count: 0, total_len: 0 }.to_bytes();
        assert_eq!(r.on_datagram(now, addr(1), &info), Outcome::Dropped);
        assert_eq!(r.stats().rejected_too_large, 3);
        assert_eq!(r.partial_messages(), 0);
        // Fragment index beyond the count.
        let info = DatagramRepr::FragmentInfo { id: 4, count: 2, total_len: 10 }.to_bytes();
        assert_eq!(r.on_datagram(now, addr(1), &info), Outcome::Pending);
        let mut f = DatagramRepr::Fragment { id: 4, index: 2, len: 1 }.to_bytes().to_vec();
        f.push(0);
        assert_eq!(r.on_datagram(now, addr(1), &f), Outcome::Dropped);
        assert_eq!(r.stats().rejected_fragment, 1);
    }

    #[test]
    fn wrong_total_discards_message() {
        let info = DatagramRepr::FragmentInfo { id: 5, count: 2, total_len: 10 }.to_bytes().to_vec();
        let mut f0 = DatagramRepr::Fragment { id: 5, index: 0, len: 3 }.to_bytes().to_vec();
        f0.extend_from_slice(&[1, 2, 3]);
        let mut f1 = DatagramRepr::Fragment { id: 5, index: 1, len: 3 }.to_bytes().to_vec();
        f1.extend_from_slice(&[4, 5, 6]);
        let mut r = Reassembler::new(ReassemblyConfig::default());
        assert!(feed(&mut r, Instant::now(), addr(1), &[info, f0, f1]).is_empty());
        assert_eq!(r.stats().size_mismatch, 1);
        assert_eq!(r.partial_messages(), 0);
    }

    #[test]
    fn flood_of_partials_stays_bounded_and_valid_message_survives() {
        let cfg = ReassemblyConfig { max_partial_messages: 16, max_buffered_bytes: 64 << 10, ..Default::default() };
        let mut r = Reassembler::new(cfg);
        let now = Instant::now();
        let msg = vec![3u8; 8000];
        let valid = datagrams(&msg, 1000, 99);
        let mut t = now;
        for id in 1000..3000 {
            // Attacker: first fragment of never-completed messages.
            let mut f = DatagramRepr::Fragment { id, index: 0, len: 900 }.to_bytes().to_vec();
            f.extend_from_slice(&[0; 900]);
            t += Duration::from_micros(1);
            r.on_datagram(t, addr(9), &f);
            assert!(r.partial_messages() <= 16);
            assert!(r.buffered_bytes() <= 64 << 10);
        }
        // A valid sender whose datagrams arrive back to back, interleaved with the flood, still
        // gets through: the flood evicts its own older partials first.
        let mut got = Vec::new();
        for (i, d) in valid.iter().enumerate() {
            t += Duration::from_micros(1);
            got.extend(feed(&mut r, t, addr(1), std::slice::from_ref(d)));
            let mut f = DatagramRepr::Fragment { id: 5000 + i as i32, index: 0, len: 900 }.to_bytes().to_vec();
            f.extend_from_slice(&[0; 900]);
            t += Duration::from_micros(1);
            r.on_datagram(t, addr(9), &f);
        }
        assert!(got == vec![msg], "valid message lost");
        assert!(r.stats().evicted > 0);
    }
}
