//! A subscriber's state and handle: its bounded queue, its callback, and the rules that let a
//! callback do anything (drop its own subscriber, call `on_receive`, drop the node) and panic
//! without breaking receiving.
//!
//! No lock is held while user code runs: delivery takes the callback out of the state under
//! the lock (an `Arc` clone), marks the thread as inside it, releases the lock, calls it, and
//! catches a panic. Dropping a subscriber waits for its callback to finish on other threads,
//! never for the calling thread's own call.

use super::codec::Codec;
use super::filter::FilterTable;
use super::node::{lock, Inner, Received};
use crate::config::QUEUE_ITEM_OVERHEAD;
use crate::pb::DataTypeInformation;
use crate::registration::metrics::{LatencyStats, RateWindow};
use crate::registration::{topic_sample, Direction, RemoteEntity};
use crate::stats::{Counter, SubscriberStats};
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

pub(crate) type RawCallback = Arc<dyn Fn(Received<Vec<u8>>) + Send + Sync>;

/// How long dropping a subscriber waits for its callback running on another thread: a
/// callback running longer than this, or two callbacks on two receive threads each dropping
/// the other's subscriber, make it give up waiting (logged at error level) rather than hang.
const DROP_WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct SubState {
    items: VecDeque<Received<Vec<u8>>>,
    /// Bytes charged for `items`: payload buffers (capacity) plus [`QUEUE_ITEM_OVERHEAD`] each.
    bytes: usize,
    /// `recv_timeout` calls waiting: the receive thread signals only then.
    waiting: usize,
    callback: Option<RawCallback>,
    /// Threads handing queued messages to the callback (`on_receive`, or the receive thread
    /// finishing what `on_receive` left): meanwhile new messages queue behind them, in order.
    draining: usize,
    /// Threads inside this subscriber's callback right now.
    active: Vec<ThreadId>,
    /// Dropped: nothing is queued or called any more.
    closed: bool,
    /// The node is gone: nothing more will be queued (what is queued can still be taken).
    ended: bool,
    /// `close` calls waiting for `active` to empty (only then is `idle` signalled: a
    /// notification is a system call, and `leave` runs per delivered message).
    closers: usize,
    /// Receive latency of accepted messages (registration's `data_latency_us`).
    latency: LatencyStats,
    /// Accepted messages and the send time (µs since the Unix epoch) of the last one: the
    /// receive rate's ticks, as eCAL times them (read together, under this lock).
    ticks: u64,
    last_send_us: i64,
}

pub(crate) struct SubShared {
    pub entity_id: u64,
    pub topic: String,
    pub datatype: DataTypeInformation,
    pub filters: Mutex<FilterTable>,
    state: Mutex<SubState>,
    /// Signalled when a message is queued for a waiting `recv_timeout`.
    ready: Condvar,
    /// Signalled when a callback call ends (for `Drop`).
    idle: Condvar,
    capacity: usize,
    capacity_bytes: usize,
    pub delivered: Counter,
    pub delivered_bytes: Counter,
    pub duplicates: Counter,
    pub out_of_order: Counter,
    pub sequence_gaps: Counter,
    pub clock_jumps_held: Counter,
    pub clock_resyncs: Counter,
    pub queue_overflow: Counter,
    pub decode_errors: Counter,
    pub callback_panics: Counter,
    panic_logged: AtomicBool,
    pub last_size: AtomicI64,
    /// Receive rate across registration rounds (only the registration thread uses it).
    pub rate: Mutex<RateWindow>,
}

impl SubShared {
    pub(crate) fn new(
        entity_id: u64,
        topic: &str,
        datatype: DataTypeInformation,
        capacity: usize,
        capacity_bytes: usize,
    ) -> Self {
        Self {
            entity_id,
            topic: topic.to_string(),
            datatype,
            filters: Mutex::new(FilterTable::default()),
            state: Mutex::new(SubState::default()),
            ready: Condvar::new(),
            idle: Condvar::new(),
            capacity: capacity.max(1),
            capacity_bytes,
            delivered: Counter::default(),
            delivered_bytes: Counter::default(),
            duplicates: Counter::default(),
            out_of_order: Counter::default(),
            sequence_gaps: Counter::default(),
            clock_jumps_held: Counter::default(),
            clock_resyncs: Counter::default(),
            queue_overflow: Counter::default(),
            decode_errors: Counter::default(),
            callback_panics: Counter::default(),
            panic_logged: AtomicBool::new(false),
            last_size: AtomicI64::new(0),
            rate: Mutex::new(RateWindow::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SubState> {
        lock(&self.state)
    }

    /// For the registration: receive latency so far (`data_latency_us`), and the receive
    /// rate's tick count and last tick time, taken together.
    pub(crate) fn receive_figures(&self) -> (crate::pb::Statistics, u64, i64) {
        let st = self.state();
        (st.latency.to_pb(), st.ticks, st.last_send_us)
    }

    pub(crate) fn stats(&self) -> SubscriberStats {
        SubscriberStats {
            delivered: self.delivered.get(),
            delivered_bytes: self.delivered_bytes.get(),
            duplicates: self.duplicates.get(),
            out_of_order: self.out_of_order.get(),
            sequence_gaps: self.sequence_gaps.get(),
            clock_jumps_held: self.clock_jumps_held.get(),
            clock_resyncs: self.clock_resyncs.get(),
            queue_overflow: self.queue_overflow.get(),
            decode_errors: self.decode_errors.get(),
            publishers_forgotten: lock(&self.filters).forgotten(),
            callback_panics: self.callback_panics.get(),
        }
    }

    /// Hands one accepted message, received at `recv_us` (µs since the Unix epoch), to the
    /// application: its callback (called here, with no lock held) or its queue (bounded in
    /// messages and bytes; the oldest is dropped, counted).
    pub(crate) fn offer(&self, r: Received<Vec<u8>>, recv_us: i64) {
        let mut st = self.state();
        if st.closed {
            return;
        }
        st.latency.add(recv_us.saturating_sub(r.send_time_us) as f64);
        st.ticks += 1;
        st.last_send_us = r.send_time_us;
        self.delivered.inc();
        self.delivered_bytes.add(r.value.len() as u64);
        self.last_size.store(r.value.len() as i64, Ordering::Relaxed);
        if st.callback.is_none() || st.draining > 0 || !st.items.is_empty() {
            // No callback, or `on_receive` is handing it queued messages (or left some):
            // behind them, in order.
            self.enqueue(&mut st, r);
            let wake = st.waiting > 0;
            let leftovers = st.callback.is_some() && st.draining == 0;
            drop(st);
            if wake {
                self.ready.notify_one();
            }
            if leftovers {
                self.drain(None);
            }
            return;
        }
        let cb = st.callback.clone().expect("checked above");
        let me = crate::transport::current_thread_id();
        st.active.push(me);
        drop(st);
        self.invoke(&cb, r);
        self.leave(self.state(), me);
    }

    fn enqueue(&self, st: &mut SubState, mut r: Received<Vec<u8>>) {
        // A payload sliced out of a much larger message keeps the message's buffer: give the
        // rest back, so the bytes charged below are the bytes held.
        if r.value.capacity() > r.value.len() + r.value.len() / 8 + 4096 {
            r.value.shrink_to_fit();
        }
        let cost = r.value.capacity() + QUEUE_ITEM_OVERHEAD;
        // Make room: by count, then by bytes (a message larger than the whole bound still
        // queues alone: it is already in memory, and dropping it would lose it for nothing).
        while !st.items.is_empty() && (st.items.len() >= self.capacity || st.bytes + cost > self.capacity_bytes) {
            if let Some(old) = st.items.pop_front() {
                st.bytes -= old.value.capacity() + QUEUE_ITEM_OVERHEAD;
                self.queue_overflow.inc();
            }
        }
        st.bytes += cost;
        st.items.push_back(r);
    }

    fn invoke(&self, cb: &RawCallback, r: Received<Vec<u8>>) {
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(r))) {
            self.callback_panics.inc();
            let what = crate::transport::panic_message(&*p);
            if self.panic_logged.swap(true, Ordering::Relaxed) {
                tracing::debug!(topic = %self.topic, panic = %what, "subscriber callback panicked again (counted)");
            } else {
                tracing::error!(
                    topic = %self.topic,
                    entity_id = self.entity_id,
                    panic = %what,
                    "subscriber callback panicked; the message is lost, receiving goes on \
                     (further panics of this subscriber are counted in callback_panics, logged at debug)"
                );
            }
        }
    }

    /// The thread `me` is no longer inside the callback; wakes a waiting `close`.
    fn leave(&self, mut st: std::sync::MutexGuard<'_, SubState>, me: ThreadId) {
        if let Some(i) = st.active.iter().position(|t| *t == me) {
            st.active.swap_remove(i);
        }
        let wake = st.closers > 0;
        drop(st);
        if wake {
            self.idle.notify_all();
        }
    }

    /// Sets the callback; messages queued before go through it first, in order.
    pub(crate) fn set_callback(&self, cb: RawCallback) {
        let old = {
            let mut st = self.state();
            if st.closed {
                return;
            }
            st.callback.replace(cb)
        };
        // The replaced callback (and whatever it owns) is dropped with no lock held.
        drop(old);
        // Hand over what is queued; stop after about a queue's worth more, so this returns
        // even when messages keep arriving faster than the callback takes them (the receive
        // thread then drains the rest before its next message).
        self.drain(Some(self.capacity));
    }

    /// Hands queued messages, one at a time and each to the callback current when it is taken,
    /// to the callback; with `limit`, at most that many beyond what was queued at the start.
    /// The thread counts as inside the callback throughout (so `close` waits for it).
    fn drain(&self, limit: Option<usize>) {
        let me = crate::transport::current_thread_id();
        let mut st = self.state();
        let mut left = limit.map(|l| st.items.len().saturating_add(l));
        st.draining += 1;
        st.active.push(me);
        loop {
            if st.closed || left == Some(0) {
                break;
            }
            let Some(cb) = st.callback.clone() else { break };
            let Some(r) = st.items.pop_front() else { break };
            st.bytes -= r.value.capacity() + QUEUE_ITEM_OVERHEAD;
            left = left.map(|n| n - 1);
            drop(st);
            self.invoke(&cb, r);
            drop(cb);
            st = self.state();
        }
        st.draining -= 1;
        self.leave(st, me);
    }

    /// Takes the next queued message, waiting until `end` (`None`: no deadline).
    fn pop(&self, end: Option<Instant>) -> Option<Received<Vec<u8>>> {
        let mut st = self.state();
        loop {
            if let Some(r) = st.items.pop_front() {
                st.bytes -= r.value.capacity() + QUEUE_ITEM_OVERHEAD;
                return Some(r);
            }
            let now = Instant::now();
            if st.closed || st.ended || end.is_some_and(|end| now >= end) {
                return None;
            }
            st.waiting += 1;
            st = match end {
                Some(end) => self.ready.wait_timeout(st, end - now).unwrap_or_else(PoisonError::into_inner).0,
                None => self.ready.wait(st).unwrap_or_else(PoisonError::into_inner),
            };
            st.waiting -= 1;
        }
    }

    /// Clears the callback (breaking any reference cycle through it), ends waiting receives once
    /// the queue is empty, and waits until no other thread is inside the callback; with
    /// `discard`, also stops delivery for good and empties the queue.
    pub(crate) fn close(&self, discard: bool) {
        let me = crate::transport::current_thread_id();
        let mut st = self.state();
        if discard {
            st.closed = true;
            st.items.clear();
            st.bytes = 0;
        }
        st.ended = true;
        let cb = st.callback.take();
        let deadline = Instant::now() + DROP_WAIT;
        st.closers += 1;
        while st.active.iter().any(|t| *t != me) {
            let now = Instant::now();
            if now >= deadline {
                tracing::error!(topic = %self.topic, "gave up waiting for this subscriber's callback on another thread");
                break;
            }
            st = self.idle.wait_timeout(st, deadline - now).unwrap_or_else(PoisonError::into_inner).0;
        }
        st.closers -= 1;
        drop(st);
        self.ready.notify_all();
        drop(cb);
    }

    /// Messages and bytes queued now (for tests and stats).
    pub(crate) fn queued(&self) -> (usize, usize) {
        let st = self.state();
        (st.items.len(), st.bytes)
    }
}

/// Receives values of codec `C` from one topic.
pub struct Subscriber<C: Codec> {
    pub(crate) node: Arc<Inner>,
    pub(crate) shared: Arc<SubShared>,
    pub(crate) _codec: PhantomData<fn() -> C>,
}

impl<C: Codec> std::fmt::Debug for Subscriber<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber").field("topic", &self.shared.topic).field("id", &self.shared.entity_id).finish()
    }
}

fn typed<C: Codec>(shared: &SubShared, r: Received<Vec<u8>>) -> Option<Received<C::Output>> {
    match C::decode(r.value) {
        Ok(value) => {
            Some(Received { value, publisher_id: r.publisher_id, clock: r.clock, send_time_us: r.send_time_us })
        }
        Err(e) => {
            shared.decode_errors.inc();
            tracing::debug!(topic = %shared.topic, error = %e, "payload decode failed");
            None
        }
    }
}

impl<C: Codec> Subscriber<C> {
    /// The topic name.
    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    /// The eCAL entity id (`topic_id`).
    pub fn entity_id(&self) -> u64 {
        self.shared.entity_id
    }

    /// Blocking receive: waits up to `timeout` for the next message (`Duration::MAX`, or any
    /// timeout past what the clock can represent: no deadline). Messages that fail to decode
    /// are counted in `decode_errors` and skipped.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Received<C::Output>> {
        let end = Instant::now().checked_add(timeout);
        loop {
            let r = self.shared.pop(end)?;
            if let Some(v) = typed::<C>(&self.shared, r) {
                return Some(v);
            }
        }
    }

    /// Callback style: `f` runs on the transport's receive thread for every message, instead of
    /// queueing (as eCAL does). Messages already queued go through `f` first, in order, on the
    /// calling thread. Setting a new callback replaces the old one.
    ///
    /// Keep it short: a slow callback delays receiving of this node's channel. It may do
    /// anything else: drop this subscriber, create or drop publishers and subscribers, call
    /// `on_receive`, drop the node. A panic is caught, counted (`callback_panics`), logged at
    /// error level once per subscriber, and receiving goes on.
    pub fn on_receive(&self, f: impl Fn(Received<C::Output>) + Send + Sync + 'static) {
        // The callback holds only a weak reference: the subscriber's state holds the callback.
        let weak = Arc::downgrade(&self.shared);
        let cb: RawCallback = Arc::new(move |r: Received<Vec<u8>>| {
            let Some(shared) = weak.upgrade() else { return };
            if let Some(v) = typed::<C>(&shared, r) {
                drop(shared);
                f(v);
            }
        });
        self.shared.set_callback(cb);
    }

    /// Messages and bytes waiting in the queue (bounded by `subscriber.queue_capacity` and
    /// `subscriber.queue_bytes`).
    pub fn queued(&self) -> (usize, usize) {
        self.shared.queued()
    }

    /// Publishers of this topic heard through registration.
    pub fn publishers(&self) -> Vec<RemoteEntity> {
        lock(&self.node.remote).publishers_of(&self.shared.topic).cloned().collect()
    }

    /// A snapshot of this subscriber's counters, drops by cause included.
    pub fn stats(&self) -> SubscriberStats {
        self.shared.stats()
    }
}

impl<C: Codec> Drop for Subscriber<C> {
    fn drop(&mut self) {
        {
            let mut map = self.node.subscribers.write().unwrap_or_else(PoisonError::into_inner);
            if let Some(v) = map.get_mut(&self.shared.topic) {
                v.retain(|s| !Arc::ptr_eq(s, &self.shared));
                if v.is_empty() {
                    map.remove(&self.shared.topic);
                }
            }
        }
        self.shared.close(true);
        if !self.node.closed() {
            let r = self.node.sub_report(&self.shared);
            self.node.send_registration(&topic_sample(&self.node.identity, Direction::Subscriber, &r, true));
        }
    }
}
