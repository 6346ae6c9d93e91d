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
use std::ops::Range;
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
    /// Of those, messages reassembled with a range (a data message's payload) in a buffer of its
    /// own ([`Reassembler::with_splitter`]).
    pub split: u64,
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

/// Finds, in the first fragment of a message (its first bytes), the byte range of the message
/// that should be reassembled into a buffer of its own ([`Reassembler::with_splitter`]).
pub type Splitter = fn(&[u8]) -> Option<Range<usize>>;

/// A reassembled message held in three parts: the bytes before the range the [`Splitter`] named,
/// the range itself in a buffer of its own (its first byte at the buffer's start), the bytes after.
#[derive(Debug, PartialEq, Eq)]
pub struct SplitMessage {
    /// The message before the split range.
    pub head: Vec<u8>,
    /// The split range (e.g. a data message's payload, handed on without another copy).
    pub payload: Vec<u8>,
    /// The message after the split range.
    pub tail: Vec<u8>,
}

impl SplitMessage {
    /// The whole message, joined (a copy; for callers that cannot use the parts).
    pub fn joined(&self) -> Vec<u8> {
        [&self.head[..], &self.payload, &self.tail].concat()
    }
}

/// What one datagram produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// A complete message: borrowed for a whole datagram, owned when reassembled.
    Message(Cow<'a, [u8]>),
    /// A complete reassembled message in three parts (only from a reassembler with a
    /// [`Splitter`], when it found its range in the first fragment).
    Split(SplitMessage),
    /// Stored; more datagrams are needed.
    Pending,
    /// Dropped; the reason is counted in [`ReassemblyStats`].
    Dropped,
}

/// Fragments `0..next` joined in order: one buffer, or three around a split range.
#[derive(Debug)]
enum Body {
    Plain(Vec<u8>),
    Split { head: Vec<u8>, payload: Vec<u8>, tail: Vec<u8>, range: Range<usize> },
}

impl Default for Body {
    fn default() -> Self {
        Self::Plain(Vec::new())
    }
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Self::Plain(v) => v.len(),
            Self::Split { head, payload, tail, .. } => head.len() + payload.len() + tail.len(),
        }
    }

    fn capacity(&self) -> usize {
        match self {
            Self::Plain(v) => v.capacity(),
            Self::Split { head, payload, tail, .. } => head.capacity() + payload.capacity() + tail.capacity(),
        }
    }

    /// Capacity after appending `len` bytes (an upper bound).
    fn capacity_with(&self, len: usize) -> usize {
        let grown =
            |v: &Vec<u8>, need: usize| if need > v.capacity() { need.max(v.capacity() * 2) } else { v.capacity() };
        match self {
            Self::Plain(v) => grown(v, v.len() + len),
            Self::Split { head, payload, tail, range } => {
                let after = (self.len() + len).saturating_sub(range.end);
                head.capacity() + payload.capacity() + grown(tail, after)
            }
        }
    }

    /// Makes room for `len` more bytes in one step, growing as [`Self::capacity_with`] says, so
    /// that the appends that follow do not grow the buffers again.
    fn reserve(&mut self, len: usize) {
        let at = self.len();
        match self {
            Self::Plain(v) => v.reserve(len),
            Self::Split { tail, range, .. } => {
                let after = (at + len).saturating_sub(range.end);
                tail.reserve(after.saturating_sub(tail.len()));
            }
        }
    }

    /// Appends the next bytes of the message: in a split body, each byte goes to the part its
    /// message offset falls in.
    fn extend(&mut self, mut bytes: &[u8]) {
        let at = self.len();
        match self {
            Self::Plain(v) => v.extend_from_slice(bytes),
            Self::Split { head, payload, tail, range } => {
                let mut at = at;
                for (part, end) in [(head, range.start), (payload, range.end)] {
                    if at < end && !bytes.is_empty() {
                        let n = (end - at).min(bytes.len());
                        part.extend_from_slice(&bytes[..n]);
                        bytes = &bytes[n..];
                        at += n;
                    }
                }
                tail.extend_from_slice(bytes);
            }
        }
    }
}

#[derive(Debug)]
struct Partial {
    info: Option<(u32, u32)>, // (count, total_len)
    /// Fragments `0..next` joined in order: in-order arrival costs one copy and, once the
    /// total is known, a single allocation (or three, exact, around a split range).
    head: Body,
    next: u32,
    /// Fragments that arrived ahead of `next`, joined into `head` when their turn comes.
    ahead: BTreeMap<u32, Vec<u8>>,
    ahead_bytes: usize,
    last_touch: Instant,
}

impl Partial {
    fn new(now: Instant) -> Self {
        Self { info: None, head: Body::default(), next: 0, ahead: BTreeMap::new(), ahead_bytes: 0, last_touch: now }
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
            self.head.capacity_with(len + self.ahead_bytes) + self.ahead_bytes
        } else {
            self.cost() + len
        }
    }

    fn insert(&mut self, index: u32, body: &[u8]) {
        if index == self.next {
            // Everything this fragment lets through is reserved at once: growing once per
            // joined fragment could double the buffer several times, past what the limits
            // were told (`cost_with`).
            let mut joining = body.len();
            let mut i = index + 1;
            while let Some(f) = self.ahead.get(&i) {
                joining += f.len();
                i += 1;
            }
            self.head.reserve(joining);
            self.head.extend(body);
            self.next += 1;
            while let Some(f) = self.ahead.remove(&self.next) {
                self.ahead_bytes -= f.len();
                self.head.extend(&f);
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
    splitter: Option<Splitter>,
}

impl Reassembler {
    /// An empty reassembler with the bounds of `config`.
    pub fn new(config: ReassemblyConfig) -> Self {
        Self::build(config, None)
    }

    /// An empty reassembler that joins the byte range `splitter` names in a message's first
    /// fragment into a buffer of its own ([`Outcome::Split`]), when the first fragment comes
    /// first (in order, after the info datagram) and the range fits the declared total; any
    /// other message is joined whole, as by [`new`](Self::new). Same bounds, counted the same.
    pub fn with_splitter(config: ReassemblyConfig, splitter: Splitter) -> Self {
        Self::build(config, Some(splitter))
    }

    fn build(config: ReassemblyConfig, splitter: Option<Splitter>) -> Self {
        Self {
            splitter,
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
        // With a splitter and the first fragment still to come, its layout decides: reserved
        // when it arrives.
        if self.splitter.is_none() || p.next > 0 {
            if !self.reserve(&mut p, total) {
                self.stats.rejected_too_large += 1;
                tracing::debug!(sender = %key.sender, id = key.id, total, "message larger than the reassembly budget; dropped");
                return Outcome::Dropped;
            }
        } else if !self.make_room(total.saturating_add(p.ahead_bytes)) {
            self.stats.rejected_too_large += 1;
            return Outcome::Dropped;
        }
        self.put(key, p);
        self.try_complete(key)
    }

    /// Reserves the rest of `total` in the plain body (counted against the limits).
    fn reserve(&mut self, p: &mut Partial, total: usize) -> bool {
        let Body::Plain(v) = &mut p.head else { return true };
        let reserve = total.saturating_sub(v.len());
        self.make_room(v.len() + reserve + p.ahead_bytes) && v.try_reserve_exact(reserve).is_ok()
    }

    /// The first fragment arrived in order: the body takes the splitter's layout (three exact
    /// buffers) when the range it names fits the declared total, else the plain one, reserved.
    fn shape_body(&mut self, p: &mut Partial, first: &[u8]) -> bool {
        let Some((_, total)) = p.info else { return true };
        let total = total as usize;
        let range = self.splitter.and_then(|f| f(first)).filter(|r| r.start <= r.end && r.end <= total);
        let Some(range) = range else { return self.reserve(p, total) };
        if !self.make_room(total + p.ahead_bytes) {
            return false;
        }
        let (mut head, mut payload, mut tail) = (Vec::new(), Vec::new(), Vec::new());
        if head.try_reserve_exact(range.start).is_err()
            || payload.try_reserve_exact(range.len()).is_err()
            || tail.try_reserve_exact(total - range.end).is_err()
        {
            return false;
        }
        p.head = Body::Split { head, payload, tail, range };
        true
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
        if index == 0 && p.next == 0 && self.splitter.is_some() && !self.shape_body(&mut p, body) {
            self.stats.rejected_too_large += 1;
            tracing::debug!(sender = %key.sender, id = key.id, "message larger than the reassembly budget; dropped");
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
        match p.head {
            Body::Plain(v) => Outcome::Message(Cow::Owned(v)),
            Body::Split { head, payload, tail, .. } => {
                self.stats.split += 1;
                Outcome::Split(SplitMessage { head, payload, tail })
            }
        }
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

    const HEADER_LEN_FOR_TESTS: usize = crate::wire::HEADER_LEN;

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

    fn middle_third(first: &[u8]) -> Option<Range<usize>> {
        // The range [100, 100 + 3 * 2000): inside the second and third fragments too.
        (first.len() >= 100).then_some(100..6100)
    }

    fn split_outcomes(r: &mut Reassembler, now: Instant, dgs: &[&Vec<u8>]) -> Vec<Outcome<'static>> {
        dgs.iter()
            .map(|d| match r.on_datagram(now, addr(1), d) {
                Outcome::Message(m) => Outcome::Message(Cow::Owned(m.into_owned())),
                Outcome::Split(m) => Outcome::Split(m),
                Outcome::Pending => Outcome::Pending,
                Outcome::Dropped => Outcome::Dropped,
            })
            .filter(|o| !matches!(o, Outcome::Pending))
            .collect()
    }

    #[test]
    fn a_splitter_range_gets_an_exact_buffer_of_its_own_in_any_order_after_the_info() {
        let msg: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let dgs = datagrams(&msg, HEADER_LEN_FOR_TESTS + 2000, 5);
        assert_eq!(dgs.len(), 6, "info + 5 fragments");
        let now = Instant::now();
        let want =
            SplitMessage { head: msg[..100].to_vec(), payload: msg[100..6100].to_vec(), tail: msg[6100..].to_vec() };
        // In order; and with fragment 0 after later ones (but after the info).
        for order in [vec![0, 1, 2, 3, 4, 5], vec![0, 3, 2, 1, 5, 4]] {
            let mut r = Reassembler::with_splitter(ReassemblyConfig::default(), middle_third);
            let got = split_outcomes(&mut r, now, &order.iter().map(|&i| &dgs[i]).collect::<Vec<_>>());
            match &got[..] {
                [Outcome::Split(m)] => {
                    assert_eq!(m, &want);
                    assert_eq!(m.payload.capacity(), 6000, "exact");
                    assert_eq!(m.joined(), msg);
                }
                other => panic!("order {order:?}: {other:?}"),
            }
            assert_eq!((r.partial_messages(), r.buffered_bytes()), (0, 0));
        }
        // Fragment 0 before the info, or a range the splitter does not find: joined whole.
        for (order, splitter) in
            [(vec![1, 0, 2, 3, 4, 5], middle_third as Splitter), (vec![0, 1, 2, 3, 4, 5], |_: &[u8]| None)]
        {
            let mut r = Reassembler::with_splitter(ReassemblyConfig::default(), splitter);
            let got = split_outcomes(&mut r, now, &order.iter().map(|&i| &dgs[i]).collect::<Vec<_>>());
            assert!(matches!(&got[..], [Outcome::Message(m)] if **m == msg[..]), "{order:?}: {got:?}");
        }
        // A range past the declared total: joined whole.
        let mut r = Reassembler::with_splitter(ReassemblyConfig::default(), |_| Some(5000..20_000));
        let got = split_outcomes(&mut r, now, &dgs.iter().collect::<Vec<_>>());
        assert!(matches!(&got[..], [Outcome::Message(m)] if **m == msg[..]), "{got:?}");
    }

    #[test]
    fn joining_waiting_fragments_grows_the_buffer_once_and_stays_within_the_byte_limit() {
        // No info: the total is unknown, so the plain buffer grows as fragments join. Fragment 1
        // arriving last joins 1 + 6 000 + 6 000 bytes behind 10 000 at once; appending them one
        // by one would double 10 001 -> 20 002 -> 40 004 bytes of capacity, past the limit.
        let cfg = ReassemblyConfig { max_buffered_bytes: 34_001, ..Default::default() };
        let mut r = Reassembler::new(cfg);
        let now = Instant::now();
        let frag = |index: u32, len: usize| {
            let mut d = DatagramRepr::Fragment { id: 9, index, len: len as u32 }.to_bytes().to_vec();
            d.extend(std::iter::repeat_n(index as u8, len));
            d
        };
        for (index, len) in [(0, 10_000), (2, 6_000), (3, 6_000), (1, 1)] {
            assert!(matches!(r.on_datagram(now, addr(1), &frag(index, len)), Outcome::Pending), "fragment {index}");
            assert!(r.buffered_bytes() <= 34_001, "after fragment {index}: {} bytes", r.buffered_bytes());
        }
        assert_eq!(r.partial_messages(), 1);
        assert_eq!(r.stats().evicted + r.stats().rejected_fragment, 0);
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
