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
//!   the least recently handled partial messages are evicted (the front of a table kept in
//!   that order, O(1) per eviction). Every drop is counted;
//! * a datagram arriving in pieces (a capture transport's IPv4 fragments) may be written
//!   straight into its message's buffer through a [`DatagramLease`] when it is a whole message or
//!   the next fragment in order: same checks, same limits (the lent buffer stays counted), and
//!   "first copy wins" holds (a copy of the lent fragment arriving meanwhile is a duplicate).
//!   A lease handed back unfinished leaves the partial message as it was before it.
//!
//! Time is a parameter: nothing here reads a clock.

use crate::wire::datagram::{MAGIC, VERSION};
use crate::wire::{Datagram, DatagramRepr, HEADER_LEN};
use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often partial messages are checked for expiry while datagrams arrive (the capture
/// transport's IPv4 reassembly uses the same period).
pub const EXPIRY_EVERY: Duration = Duration::from_millis(100);

/// Maps keyed by what the network sends (sender, message id), looked up for every fragment:
/// foldhash with a per-process random seed, several times faster than std's SipHash on these
/// small keys (the partials' table, [`crate::bounded::OldestFirst`], uses it too). Its weaker
/// resistance to crafted collisions is bounded here: the maps hold at most
/// `max_partial_messages` partial and a bounded number of recently completed keys, so a worst
/// case costs a scan of that many.
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

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
    /// Datagrams written straight into their message's buffer as their pieces arrived
    /// ([`Reassembler::begin_lease`]).
    pub leased: u64,
    /// Leases handed back unfinished (pieces out of order, a conflict, expiry): the datagram
    /// went on through the buffered path, or was lost with its partial message.
    pub lease_aborted: u64,
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

    /// Drops the bytes from message offset `len` on (from a lease handed back unfinished).
    fn truncate(&mut self, len: usize) {
        match self {
            Self::Plain(v) => v.truncate(len),
            Self::Split { head, payload, tail, range } => {
                head.truncate(len.min(range.start));
                payload.truncate(len.clamp(range.start, range.end) - range.start);
                tail.truncate(len.saturating_sub(range.end));
            }
        }
    }

    /// Appends the message bytes from offset `from` on to `out`.
    fn copy_from(&self, from: usize, out: &mut Vec<u8>) {
        match self {
            Self::Plain(v) => out.extend_from_slice(v.get(from..).unwrap_or_default()),
            Self::Split { head, payload, tail, range } => {
                for (part, start) in [(head, 0), (payload, range.start), (tail, range.end)] {
                    out.extend_from_slice(part.get(from.saturating_sub(start)..).unwrap_or_default());
                }
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
    /// While fragment `next` is written through a [`DatagramLease`]: the lease's number. `head`
    /// is then empty; the lease holds it (its capacity counted as lent, see [`Reassembler`]).
    leased: Option<u64>,
    /// Message bytes the lease stands for meanwhile: fragments `0..next` and the lent one.
    leased_bytes: usize,
}

impl Partial {
    fn new(now: Instant) -> Self {
        Self {
            info: None,
            head: Body::default(),
            next: 0,
            ahead: BTreeMap::new(),
            ahead_bytes: 0,
            last_touch: now,
            leased: None,
            leased_bytes: 0,
        }
    }

    /// Memory this partial holds (what the limits count).
    fn cost(&self) -> usize {
        self.head.capacity() + self.ahead_bytes
    }

    fn has(&self, index: u32) -> bool {
        index < self.next || self.ahead.contains_key(&index) || (self.leased.is_some() && index == self.next)
    }

    fn fragment_count(&self) -> usize {
        self.next as usize + self.ahead.len()
    }

    fn payload_bytes(&self) -> usize {
        self.head.len() + self.ahead_bytes + self.leased_bytes
    }

    /// Whether fragment `index` of `len` bytes is appended where the partial lies, with no
    /// limit to check again: the next in order (not the first: its layout may be decided by
    /// the splitter) of a message whose body is reserved, nothing waiting or lent, within the
    /// declared total, and the cost unchanged. Returns the message's fragment count.
    fn takes_next(&self, index: u32, len: usize) -> Option<u32> {
        let (count, total) = self.info?;
        (index > 0
            && index == self.next
            && index < count
            && self.ahead.is_empty()
            && self.leased.is_none()
            && self.payload_bytes() + len <= total as usize
            && self.cost_with(index, len) == self.cost())
        .then_some(count)
    }

    /// Whether the next fragment in order, of `len` bytes, goes where the body lies with no
    /// growth: within the declared total and the room reserved. With nothing waiting ahead or
    /// lent, the same as [`takes_next`](Self::takes_next) for that fragment.
    fn appends_in_place(&self, total: u32, len: usize) -> bool {
        debug_assert!(self.ahead.is_empty() && self.leased.is_none());
        self.payload_bytes() + len <= total as usize && self.head.capacity_with(len) == self.head.capacity()
    }

    /// Cost after inserting a fragment of `len` bytes at `index` (an upper bound).
    fn cost_with(&self, index: u32, len: usize) -> usize {
        if index == self.next {
            self.head.capacity_with(len + self.ahead_bytes) + self.ahead_bytes
        } else {
            self.cost() + len
        }
    }

    /// Bytes of the fragments waiting right after fragment `index`.
    fn joining_after(&self, index: u32) -> usize {
        let mut joining = 0;
        let mut i = index + 1;
        while let Some(f) = self.ahead.get(&i) {
            joining += f.len();
            i += 1;
        }
        joining
    }

    /// Fragment `next` is in `head`: it and the fragments waiting behind it are joined.
    fn advance(&mut self) {
        self.next += 1;
        while let Some(f) = self.ahead.remove(&self.next) {
            self.ahead_bytes -= f.len();
            self.head.extend(&f);
            self.next += 1;
        }
    }

    fn insert(&mut self, index: u32, body: &[u8]) {
        if index == self.next {
            // Everything this fragment lets through is reserved at once: growing once per
            // joined fragment could double the buffer several times, past what the limits
            // were told (`cost_with`).
            self.head.reserve(body.len() + self.joining_after(index));
            self.head.extend(body);
            self.advance();
        } else {
            self.ahead_bytes += body.len();
            self.ahead.insert(index, body.to_vec());
        }
    }
}

/// A datagram written into its message's buffer as its pieces arrive (the IPv4 fragments of a
/// UDP datagram, in order), from [`Reassembler::begin_lease`]: one copy from where the pieces
/// lie to where the message is handed on. It holds the message's buffer while it is out, room
/// reserved for exactly the datagram's declared body: nothing pushed can land outside it.
/// Hand it back with [`Reassembler::finish_lease`] once [`remaining`](Self::remaining) is 0, or
/// [`Reassembler::abort_lease`].
#[derive(Debug)]
pub struct DatagramLease {
    sender: SocketAddr,
    len: usize,
    kind: LeaseKind,
    header: [u8; HEADER_LEN],
    body: Body,
    /// The body's length when the lease began: earlier fragments' bytes lie before it.
    start: usize,
    remaining: usize,
    /// The lending reassembler's count of lent bytes, and this lease's part of it: given back
    /// when the lease is, or when it is dropped (however it ends, the bytes stay counted
    /// against the reassembler's limits while they exist).
    lent: Arc<AtomicUsize>,
    counted: usize,
}

impl Drop for DatagramLease {
    fn drop(&mut self) {
        self.lent.fetch_sub(self.counted, Ordering::Relaxed);
    }
}

/// Lease numbers, unique in the process (a lease can only be taken back by the partial message
/// it was lent from, whichever reassembler it reaches).
static LEASES: AtomicU64 = AtomicU64::new(0);

#[derive(Debug)]
enum LeaseKind {
    /// A whole message (type 3): its buffer is the lease's own.
    Whole,
    /// Fragment `index` of message `id`, lease number `number`.
    Fragment { id: i32, index: u32, number: u64 },
    /// The reassembler dropped the datagram (counted): pushes are discarded.
    Discard,
}

impl DatagramLease {
    /// Body bytes still to come.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// The datagram's sender.
    pub fn sender(&self) -> SocketAddr {
        self.sender
    }

    /// The datagram's length, as given to [`Reassembler::begin_lease`].
    pub fn datagram_len(&self) -> usize {
        self.len
    }

    /// Appends the datagram's next bytes; bytes beyond its declared body are ignored (as a
    /// datagram's trailing bytes are). Returns how many were taken.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.remaining);
        if !matches!(self.kind, LeaseKind::Discard) {
            self.body.extend(&bytes[..n]);
        }
        self.remaining -= n;
        n
    }
}

/// Bounded reassembly of eCAL message fragments.
#[derive(Debug)]
pub struct Reassembler {
    config: ReassemblyConfig,
    /// Oldest handled first: a partial is put back at the newest end each time it is handled
    /// (taken out and put back, or appended to in place), so eviction takes the front.
    partials: crate::bounded::OldestFirst<FragKey, Partial>,
    buffered: usize,
    stats: ReassemblyStats,
    /// When partials are next checked for expiry (`None`: at the next datagram).
    expiry_due: Option<Instant>,
    /// Recently completed keys, oldest first, with a set for lookup.
    done_order: VecDeque<(FragKey, Instant)>,
    done: HashSet<FragKey>,
    splitter: Option<Splitter>,
    /// Capacity of the buffers out on leases (counted against `max_buffered_bytes` with
    /// `buffered`, until each lease is given back or dropped).
    lent: Arc<AtomicUsize>,
}

/// Message id, fragment index and body of a fragment datagram; `None` for anything else.
fn fragment_parts(datagram: &[u8]) -> Option<(i32, u32, &[u8])> {
    let d = Datagram::new_checked(datagram).ok()?;
    match DatagramRepr::parse(&d).ok()? {
        DatagramRepr::Fragment { id, index, .. } => Some((id, index, d.into_body())),
        _ => None,
    }
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
            partials: crate::bounded::oldest_first(),
            buffered: 0,
            stats: ReassemblyStats::default(),
            expiry_due: None,
            done_order: VecDeque::new(),
            done: HashSet::default(),
            lent: Arc::new(AtomicUsize::new(0)),
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

    /// Fragment bytes held now, those in buffers out on leases included.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered + self.lent()
    }

    fn lent(&self) -> usize {
        self.lent.load(Ordering::Relaxed)
    }

    /// Feeds one UDP payload received from `sender` at `now`.
    pub fn on_datagram<'a>(&mut self, now: Instant, sender: SocketAddr, datagram: &'a [u8]) -> Outcome<'a> {
        // Purge at most every 100 ms; cheap enough to call on every datagram.
        if self.expiry_due.is_none_or(|due| now >= due) {
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

    /// Takes, from the start of `buffer` (datagrams of `size` bytes back to back, the last
    /// shorter: a segmentation offload buffer seen uncut), the run of fragments that
    /// [`on_datagram`](Self::on_datagram) would append in place one by one: the next in order
    /// of one message whose body is reserved, that message's last fragment excluded (its
    /// completion goes through `on_datagram`). One lookup for the run. Returns the bytes taken,
    /// a multiple of `size`; 0 when the first datagram is anything else. Same checks, limits
    /// and outcome as the datagrams one by one.
    pub fn append_run(&mut self, now: Instant, sender: SocketAddr, buffer: &[u8], size: usize) -> usize {
        if size == 0 {
            return 0;
        }
        if self.expiry_due.is_none_or(|due| now >= due) {
            self.expire(now);
        }
        // Each piece parsed once: the first names the message, the run stops at the first piece
        // that is not a fragment.
        let mut pieces = buffer.chunks(size).map_while(|piece| fragment_parts(piece).map(|parts| (piece, parts)));
        let Some((first, (id, index, body))) = pieces.next() else { return 0 };
        let Some(p) = self.partials.to_back(&FragKey { sender, id }) else { return 0 };
        // The first goes through every check. What they establish (the info known, nothing
        // waiting ahead, nothing lent) holds for the rest of the run, since appending the next
        // fragment in order changes none of it: each next one needs only the checks that
        // depend on it, the same outcome as `takes_next` and `insert` one by one.
        let Some(count) = p.takes_next(index, body.len()).filter(|&c| index + 1 < c) else { return 0 };
        let Some((_, total)) = p.info else { return 0 };
        p.last_touch = now;
        p.insert(index, body);
        let mut taken = first.len();
        for (piece, (piece_id, index, body)) in pieces {
            if piece_id != id || index != p.next || index + 1 >= count || !p.appends_in_place(total, body.len()) {
                break;
            }
            p.head.extend(body);
            p.next += 1;
            taken += piece.len();
        }
        taken
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
        if p.leased.is_some() {
            // The lease holds the body; the fragments after it reserve as they come.
            if !self.make_room(p.cost()) {
                self.stats.rejected_too_large += 1;
                return Outcome::Dropped;
            }
        } else if self.splitter.is_none() || p.next > 0 {
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
        // The usual case, one lookup: the next fragment in order (not the first: its layout
        // may be decided by the splitter) of a message whose body is reserved is appended where
        // the partial lies. Its cost does not change, so no limit needs checking again. (A
        // partial's key is never in `done`: both paths below check that before creating one.)
        if let Some(p) = self.partials.to_back(&key) {
            if let Some(count) = p.takes_next(index, body.len()) {
                p.last_touch = now;
                p.insert(index, body);
                return if p.next < count { Outcome::Pending } else { self.try_complete(key) };
            }
        }
        if self.done.contains(&key) {
            self.stats.duplicates += 1;
            return Outcome::Dropped;
        }
        let taken = self.take(&key);
        let existed = taken.is_some();
        let mut p = taken.unwrap_or_else(|| Partial::new(now));
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
            // A partial of its own only if it had one: a new one would skip `make_room`.
            if existed {
                self.put(key, p);
            }
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
        if p.fragment_count() < count as usize || p.leased.is_some() {
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

    /// Begins a datagram of `len` bytes from `sender` whose first `first.len()` bytes have
    /// arrived (the UDP payload in a datagram's first IPv4 fragment): when it is a whole message,
    /// or the next fragment in order of a message in progress, the lease writes it straight into
    /// the message's buffer (after the same checks and within the same limits as
    /// [`on_datagram`](Self::on_datagram)), and the datagram's first bytes are pushed already.
    /// `None` when the datagram must go the buffered way (`on_datagram` once it is whole):
    /// another type, a header that does not describe exactly `len` bytes, a fragment out of
    /// order, or one already being written. One call; the pushes that follow need none.
    pub fn begin_lease(&mut self, now: Instant, sender: SocketAddr, first: &[u8], len: usize) -> Option<DatagramLease> {
        if self.expiry_due.is_none_or(|due| now >= due) {
            self.expire(now);
        }
        if first.len() < HEADER_LEN || first[..4] != MAGIC || first[4] != VERSION || first.len() > len {
            return None;
        }
        let header: [u8; HEADER_LEN] = first[..HEADER_LEN].try_into().expect("length checked");
        let repr = DatagramRepr::parse(&Datagram::new_unchecked(&header[..])).ok()?;
        let lent = Arc::clone(&self.lent);
        let lease = |kind, body: Body, body_len: usize| {
            let counted = body.capacity();
            lent.fetch_add(counted, Ordering::Relaxed);
            let start = body.len();
            let mut l = DatagramLease { sender, len, kind, header, body, start, remaining: body_len, lent, counted };
            l.push(&first[HEADER_LEN..]);
            l
        };
        match repr {
            // Exactly the declared body: a datagram with bytes after it goes the buffered way
            // (the bytes so far could not be handed back whole otherwise).
            DatagramRepr::Whole { len: body_len } if HEADER_LEN + body_len as usize == len => {
                let body_len = body_len as usize;
                // Within the limits, lent buffers included; else the buffered way (which needs
                // no buffer of the reassembler's for a whole message).
                if self.buffered + self.lent() + body_len > self.config.max_buffered_bytes {
                    return None;
                }
                let range = self
                    .splitter
                    .and_then(|f| f(&first[HEADER_LEN..]))
                    .filter(|r| r.start <= r.end && r.end <= body_len);
                let body = match range {
                    Some(range) => Body::Split {
                        head: Vec::with_capacity(range.start),
                        payload: Vec::with_capacity(range.len()),
                        tail: Vec::with_capacity(body_len - range.end),
                        range,
                    },
                    None => Body::Plain(Vec::with_capacity(body_len)),
                };
                self.stats.leased += 1;
                Some(lease(LeaseKind::Whole, body, body_len))
            }
            DatagramRepr::Fragment { id, index, len: body_len } if HEADER_LEN + body_len as usize == len => {
                let key = FragKey { sender, id };
                if self.done.contains(&key) {
                    return None;
                }
                let existing = self.take(&key);
                let existed = existing.is_some();
                let mut p = existing.unwrap_or_else(|| Partial::new(now));
                let body_len = body_len as usize;
                let fits = match p.info {
                    Some((count, total)) => index < count && p.payload_bytes() + body_len <= total as usize,
                    None => p.payload_bytes() + body_len <= self.config.max_message_len,
                };
                if !fits || index != p.next || p.leased.is_some() {
                    // The buffered way decides (and counts) what is wrong with it.
                    if existed {
                        self.put(key, p);
                    }
                    return None;
                }
                p.last_touch = now;
                if index == 0 && self.splitter.is_some() && !self.shape_body(&mut p, &first[HEADER_LEN..]) {
                    self.stats.rejected_too_large += 1;
                    tracing::debug!(%sender, id, "message larger than the reassembly budget; dropped");
                    return Some(lease(LeaseKind::Discard, Body::default(), body_len));
                }
                if !self.make_room(p.cost_with(index, body_len)) {
                    self.stats.rejected_fragment += 1;
                    return Some(lease(LeaseKind::Discard, Body::default(), body_len));
                }
                p.head.reserve(body_len + p.joining_after(index));
                let number = LEASES.fetch_add(1, Ordering::Relaxed) + 1;
                let body = std::mem::take(&mut p.head);
                p.leased = Some(number);
                p.leased_bytes = body.len() + body_len;
                self.put(key, p);
                self.stats.leased += 1;
                Some(lease(LeaseKind::Fragment { id, index, number }, body, body_len))
            }
            _ => None,
        }
    }

    /// Takes back a lease whose datagram is complete ([`DatagramLease::remaining`] is 0): as
    /// [`on_datagram`](Self::on_datagram) with the whole datagram would have, it completes the
    /// message or stores the fragment. An unfinished lease is aborted.
    pub fn finish_lease(&mut self, now: Instant, mut lease: DatagramLease) -> Outcome<'static> {
        if lease.remaining > 0 {
            self.abort_lease(lease, None);
            return Outcome::Dropped;
        }
        let body = std::mem::take(&mut lease.body);
        match lease.kind {
            LeaseKind::Discard => Outcome::Dropped,
            LeaseKind::Whole => {
                self.stats.messages += 1;
                match body {
                    Body::Plain(v) => Outcome::Message(Cow::Owned(v)),
                    Body::Split { head, payload, tail, .. } => {
                        self.stats.split += 1;
                        Outcome::Split(SplitMessage { head, payload, tail })
                    }
                }
            }
            LeaseKind::Fragment { id, index, number } => {
                let key = FragKey { sender: lease.sender, id };
                // Gone meanwhile (expired, evicted, or replaced: counted then).
                let Some(mut p) = self.take(&key) else { return Outcome::Dropped };
                if p.leased != Some(number) || p.next != index {
                    self.put(key, p);
                    return Outcome::Dropped;
                }
                p.leased = None;
                p.leased_bytes = 0;
                p.head = body;
                p.last_touch = now;
                let start = lease.start;
                // The body is counted in the partial again, no longer as lent.
                drop(lease);
                // The info may have come while the lease was out: the fragment must fit it.
                if let Some((count, total)) = p.info {
                    if index >= count || p.payload_bytes() > total as usize {
                        self.stats.rejected_fragment += 1;
                        p.head.truncate(start);
                        self.put(key, p);
                        return Outcome::Dropped;
                    }
                }
                let joining = p.joining_after(index);
                p.head.reserve(joining);
                p.advance();
                self.put(key, p);
                self.trim();
                self.try_complete(key)
            }
        }
    }

    /// Takes back an unfinished lease. With `out`, the datagram's bytes received so far (its
    /// header and the body pushed) are appended to it, for the buffered way to go on from;
    /// returns whether they were (not for a datagram the reassembler had already dropped).
    /// The partial message is left as it was before the lease.
    pub fn abort_lease(&mut self, mut lease: DatagramLease, out: Option<&mut Vec<u8>>) -> bool {
        self.stats.lease_aborted += 1;
        if let LeaseKind::Discard = lease.kind {
            return false;
        }
        if let Some(out) = out {
            out.extend_from_slice(&lease.header);
            lease.body.copy_from(lease.start, out);
        }
        if let LeaseKind::Fragment { id, index, number } = lease.kind {
            let key = FragKey { sender: lease.sender, id };
            if let Some(mut p) = self.take(&key) {
                if p.leased == Some(number) && p.next == index {
                    let mut body = std::mem::take(&mut lease.body);
                    body.truncate(lease.start);
                    p.head = body;
                    p.leased = None;
                    p.leased_bytes = 0;
                    // Begun by this lease alone: nothing to keep (the buffered way starts it
                    // again when the datagram completes).
                    if p.next == 0 && p.ahead.is_empty() && p.info.is_none() {
                        return true;
                    }
                }
                self.put(key, p);
            }
        }
        true
    }

    /// Evicts the least recently handled partials while the bytes held exceed the limit.
    fn trim(&mut self) {
        while self.buffered + self.lent() > self.config.max_buffered_bytes {
            let Some(oldest) = self.partials.front().map(|(k, _)| *k) else {
                break;
            };
            self.take(&oldest);
            self.stats.evicted += 1;
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

    /// Evicts least recently handled partials (O(1) each: the front of the table) until `extra`
    /// more bytes and one more partial fit. Returns false when even an empty table could not
    /// take `extra` bytes.
    fn make_room(&mut self, extra: usize) -> bool {
        if extra > self.config.max_buffered_bytes {
            return false;
        }
        while self.partials.len() >= self.config.max_partial_messages.max(1)
            || self.buffered + self.lent() + extra > self.config.max_buffered_bytes
        {
            let Some(oldest) = self.partials.front().map(|(k, _)| *k) else {
                break;
            };
            self.take(&oldest);
            self.stats.evicted += 1;
            tracing::debug!(sender = %oldest.sender, id = oldest.id, "evicted partial message to stay within limits");
        }
        // Buffers out on leases cannot be evicted: no room while they fill it.
        self.buffered + self.lent() + extra <= self.config.max_buffered_bytes
    }

    /// Drops partial messages untouched for longer than the timeout.
    pub fn expire(&mut self, now: Instant) {
        self.expiry_due = now.checked_add(EXPIRY_EVERY);
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

    /// A run stops at a fragment past the declared total even where the body has room for it
    /// (its first fragment came before the info and reserved more than a lying total), and
    /// that fragment is then refused one by one.
    #[test]
    fn a_run_stops_at_a_fragment_past_the_declared_total_though_it_would_fit() {
        use crate::wire::DatagramRepr;
        let frag =
            |index: u32| [&DatagramRepr::Fragment { id: 9, index, len: 2 }.to_bytes()[..], &[index as u8; 2]].concat();
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let now = Instant::now();
        assert!(matches!(r.on_datagram(now, addr(1), &frag(0)), Outcome::Pending));
        let info = DatagramRepr::FragmentInfo { id: 9, count: 5, total_len: 7 }.to_bytes();
        assert!(matches!(r.on_datagram(now, addr(1), &info), Outcome::Pending));
        let run = [frag(1), frag(2), frag(3)].concat();
        let taken = r.append_run(now, addr(1), &run, HEADER_LEN_FOR_TESTS + 2);
        assert_eq!(taken, 2 * (HEADER_LEN_FOR_TESTS + 2), "fragments 1 and 2 only");
        assert!(matches!(r.on_datagram(now, addr(1), &frag(3)), Outcome::Dropped));
        assert_eq!((r.stats().rejected_fragment, r.partial_messages()), (1, 1));
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

    /// Writes datagram `d` through a lease in pieces of 1480 bytes (the first one at most
    /// `first`), then finishes it.
    fn leased<'a>(r: &mut Reassembler, now: Instant, d: &[u8], first: usize) -> Option<Outcome<'a>> {
        let first = first.min(d.len());
        let mut l = r.begin_lease(now, addr(1), &d[..first], d.len())?;
        for piece in d[first..].chunks(1480) {
            assert_eq!(l.push(piece), piece.len());
        }
        assert_eq!(l.remaining(), 0);
        Some(r.finish_lease(now, l))
    }

    #[test]
    fn leases_write_in_order_fragments_and_whole_messages_into_their_buffers() {
        let msg: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let dgs = datagrams(&msg, HEADER_LEN_FOR_TESTS + 2000, 5);
        let now = Instant::now();
        let mut r = Reassembler::with_splitter(ReassemblyConfig::default(), middle_third);
        // The info goes the buffered way (it is not a fragment or a whole message).
        assert_eq!(r.begin_lease(now, addr(1), &dgs[0], dgs[0].len()).map(|_| ()), None);
        assert!(matches!(r.on_datagram(now, addr(1), &dgs[0]), Outcome::Pending));
        let mut got = Vec::new();
        for d in &dgs[1..] {
            match leased(&mut r, now, d, 300).expect("in order: leased") {
                Outcome::Pending => {}
                o => got.push(o),
            }
        }
        match &got[..] {
            [Outcome::Split(m)] => {
                assert_eq!(m.joined(), msg);
                assert_eq!(m.payload.capacity(), 6000, "the split layout, exact, as buffered");
            }
            other => panic!("{other:?}"),
        }
        let st = r.stats();
        assert_eq!((st.leased, st.lease_aborted, st.messages, st.split), (5, 0, 1, 1));
        assert_eq!((r.partial_messages(), r.buffered_bytes()), (0, 0));
        // A late copy of a fragment of the delivered message: not leased, a duplicate.
        assert!(r.begin_lease(now, addr(1), &dgs[3][..100], dgs[3].len()).is_none());
        // A whole message: its own buffer, split as the splitter says.
        let whole = datagrams(&msg, msg.len() + HEADER_LEN_FOR_TESTS, 0);
        assert_eq!(whole.len(), 1);
        match leased(&mut r, now, &whole[0], 1000) {
            Some(Outcome::Split(m)) => assert_eq!(m.joined(), msg),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn leases_refuse_what_the_buffered_way_must_judge() {
        let msg = vec![7u8; 9000];
        let dgs = datagrams(&msg, HEADER_LEN_FOR_TESTS + 2000, 5);
        let now = Instant::now();
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let begin = |r: &mut Reassembler, d: &[u8], first: usize, len: usize| {
            r.begin_lease(now, addr(1), &d[..first.min(d.len())], len).is_some()
        };
        // Out of order (fragment 2 before 0 and 1); a header cut short; a bad magic; a
        // declared body longer than the datagram; first bytes longer than the datagram.
        assert!(!begin(&mut r, &dgs[3], 100, dgs[3].len()));
        assert!(!begin(&mut r, &dgs[1], 20, dgs[1].len()));
        let mut bad = dgs[1].clone();
        bad[0] = b'X';
        assert!(!begin(&mut r, &bad, 100, bad.len()));
        assert!(!begin(&mut r, &dgs[1], 100, dgs[1].len() - 1));
        assert!(!begin(&mut r, &dgs[1], 100, 50));
        assert_eq!(r.partial_messages(), 0, "nothing left behind by refusals");
        // A fragment already lent: a second lease is refused, a buffered copy is a duplicate.
        let mut l = r.begin_lease(now, addr(1), &dgs[1][..100], dgs[1].len()).unwrap();
        assert!(!begin(&mut r, &dgs[1], 100, dgs[1].len()));
        assert!(matches!(r.on_datagram(now, addr(1), &dgs[1]), Outcome::Pending));
        assert_eq!(r.stats().duplicates, 1);
        l.push(&dgs[1][100..]);
        assert!(matches!(r.finish_lease(now, l), Outcome::Pending));
        for d in [&dgs[0], &dgs[2], &dgs[3], &dgs[4], &dgs[5]] {
            let _ = r.on_datagram(now, addr(1), d);
        }
        assert_eq!(r.stats().messages, 1);
    }

    #[test]
    fn an_aborted_lease_leaves_the_partial_message_as_it_was() {
        let msg: Vec<u8> = (0..9000u32).map(|i| i as u8).collect();
        let dgs = datagrams(&msg, HEADER_LEN_FOR_TESTS + 2000, 5);
        let now = Instant::now();
        let mut r = Reassembler::new(ReassemblyConfig::default());
        for d in &dgs[..2] {
            let _ = r.on_datagram(now, addr(1), d);
        }
        let before = r.buffered_bytes();
        let mut l = r.begin_lease(now, addr(1), &dgs[2][..500], dgs[2].len()).unwrap();
        l.push(&dgs[2][500..1500]);
        let mut so_far = Vec::new();
        assert!(r.abort_lease(l, Some(&mut so_far)));
        assert_eq!(so_far, dgs[2][..1500]);
        assert_eq!(r.buffered_bytes(), before);
        // The buffered way goes on from the bytes so far and completes the message.
        so_far.extend_from_slice(&dgs[2][1500..]);
        let mut out = feed(&mut r, now, addr(1), &[so_far]);
        out.extend(feed(&mut r, now, addr(1), &dgs[3..]));
        assert_eq!(out, vec![msg]);
        assert_eq!(r.stats().lease_aborted, 1);
        // A lease that begins a message alone and is handed back leaves nothing behind.
        let other = datagrams(&[1u8; 5000], HEADER_LEN_FOR_TESTS + 2000, 6);
        let l = r.begin_lease(now, addr(1), &other[1][..100], other[1].len()).unwrap();
        assert!(r.abort_lease(l, None));
        assert_eq!((r.partial_messages(), r.buffered_bytes()), (0, 0));
    }

    #[test]
    fn a_lease_outlived_by_its_partial_message_delivers_nothing_and_holds_nothing() {
        let msg = vec![3u8; 9000];
        let dgs = datagrams(&msg, HEADER_LEN_FOR_TESTS + 2000, 5);
        let t0 = Instant::now();
        let cfg = ReassemblyConfig::default();
        let timeout = cfg.timeout;
        let mut r = Reassembler::new(cfg);
        let _ = r.on_datagram(t0, addr(1), &dgs[0]);
        let mut l = r.begin_lease(t0, addr(1), &dgs[1][..100], dgs[1].len()).unwrap();
        assert!(r.buffered_bytes() >= 9000, "the lent buffer stays counted: {}", r.buffered_bytes());
        r.expire(t0 + timeout);
        // The partial message is gone; its buffer, out on the lease, is still counted.
        assert_eq!((r.partial_messages(), r.stats().expired), (0, 1));
        assert!(r.buffered_bytes() >= 9000, "{}", r.buffered_bytes());
        l.push(&dgs[1][100..]);
        let later = t0 + timeout + Duration::from_millis(1);
        assert!(matches!(r.finish_lease(later, l), Outcome::Dropped));
        assert_eq!((r.partial_messages(), r.buffered_bytes()), (0, 0));
        // A lease dropped without being handed back gives its bytes back too.
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let l = r.begin_lease(t0, addr(1), &dgs[1][..100], dgs[1].len()).unwrap();
        assert!(r.buffered_bytes() > 0);
        drop(l);
        r.expire(t0 + timeout);
        assert_eq!((r.partial_messages(), r.buffered_bytes()), (0, 0));
        // The info arriving while a lease is out declares fewer bytes than the fragments held,
        // the lent one included: the message is dropped, as it would be had the lent fragment
        // come the buffered way, and the lease comes back to nothing.
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let _ = r.on_datagram(t0, addr(1), &dgs[1]);
        let mut l = r.begin_lease(t0, addr(1), &dgs[2][..100], dgs[2].len()).unwrap();
        let info = DatagramRepr::FragmentInfo { id: 5, count: 2, total_len: 3000 }.to_bytes();
        let _ = r.on_datagram(t0, addr(1), &info);
        l.push(&dgs[2][100..]);
        assert!(matches!(r.finish_lease(t0, l), Outcome::Dropped));
        assert_eq!((r.stats().size_mismatch, r.partial_messages(), r.buffered_bytes()), (1, 0, 0));
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
    fn oversized_first_fragments_leave_no_partial_behind() {
        // Fragments larger than `max_message_size`, each of a new message with no info yet:
        // dropped, and no empty partial is left (it would skip the bound on partial messages).
        let config = ReassemblyConfig { max_message_len: 10, max_partial_messages: 2, ..ReassemblyConfig::default() };
        let mut r = Reassembler::new(config);
        let now = Instant::now();
        for id in 0..50 {
            let mut f = DatagramRepr::Fragment { id, index: 1, len: 11 }.to_bytes().to_vec();
            f.extend_from_slice(&[0; 11]);
            assert_eq!(r.on_datagram(now, addr(1), &f), Outcome::Dropped);
        }
        assert_eq!((r.partial_messages(), r.stats().rejected_fragment), (0, 50));
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
