//! A byte-bounded queue between the capture thread and a channel's receive thread: the
//! capture path's equivalent of a socket receive buffer. Overflow drops the new datagram and
//! counts it. Buffers come back to a small pool after use: no allocation per datagram.

use middleware_core::transport::DatagramSink;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Buffers kept for reuse at most, and the largest one kept.
const POOL: usize = 64;
const POOL_MAX_CAPACITY: usize = 128 << 10;

#[derive(Debug, Default)]
struct State {
    items: VecDeque<(Vec<u8>, SocketAddr)>,
    bytes: usize,
    closed: bool,
    /// Readers blocked in `pop_with`: the capture thread signals only then.
    waiting: usize,
}

pub struct ByteQueue {
    state: Mutex<State>,
    ready: Condvar,
    capacity: usize,
    spare: Mutex<Vec<Vec<u8>>>,
    /// When set, `push` hands datagrams to it on the capture thread instead of queueing them.
    sink: RwLock<Option<DatagramSink>>,
    pub dropped: AtomicU64,
    /// Datagrams (and their bytes) handed out, by `pop_with` or to the sink.
    pub delivered: AtomicU64,
    pub delivered_bytes: AtomicU64,
}

impl std::fmt::Debug for ByteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByteQueue").field("capacity", &self.capacity).finish_non_exhaustive()
    }
}

impl ByteQueue {
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::default(),
            ready: Condvar::new(),
            capacity,
            spare: Mutex::new(Vec::new()),
            sink: RwLock::new(None),
            dropped: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            delivered_bytes: AtomicU64::new(0),
        }
    }

    /// Sets or clears the sink; clearing waits for a delivery in progress to end.
    pub fn set_sink(&self, sink: Option<DatagramSink>) {
        *self.sink.write().expect("poisoned") = sink;
    }

    fn count(&self, len: usize) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.delivered_bytes.fetch_add(len as u64, Ordering::Relaxed);
    }

    /// Hands `payload` to the sink, or queues a copy; false (and counted) when the queue is full.
    pub fn push(&self, payload: &[u8], from: SocketAddr) -> bool {
        if let Some(sink) = self.sink.read().expect("poisoned").as_ref() {
            self.count(payload.len());
            sink(payload, from);
            return true;
        }
        // The copy is made outside the queue's lock (the reader is not held up by it).
        let mut buf = self.spare.lock().expect("poisoned").pop().unwrap_or_default();
        buf.extend_from_slice(payload);
        let mut s = self.state.lock().expect("poisoned");
        if s.bytes + buf.len() > self.capacity {
            drop(s);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.recycle(buf);
            return false;
        }
        s.bytes += buf.len();
        s.items.push_back((buf, from));
        let wake = s.waiting > 0;
        drop(s);
        if wake {
            self.ready.notify_one();
        }
        true
    }

    /// Waits up to `timeout` for a datagram and hands it to `f` (its buffer then goes back to
    /// the pool); false on timeout or when closed and empty.
    pub fn pop_with(&self, timeout: Duration, f: impl FnOnce(&[u8], SocketAddr)) -> bool {
        let end = Instant::now() + timeout;
        let mut s = self.state.lock().expect("poisoned");
        let (buf, from) = loop {
            if let Some(item) = s.items.pop_front() {
                s.bytes -= item.0.len();
                break item;
            }
            let now = Instant::now();
            if s.closed || now >= end {
                return false;
            }
            s.waiting += 1;
            s = self.ready.wait_timeout(s, end - now).expect("poisoned").0;
            s.waiting -= 1;
        };
        drop(s);
        self.count(buf.len());
        f(&buf, from);
        self.recycle(buf);
        true
    }

    fn recycle(&self, mut buf: Vec<u8>) {
        let mut spare = self.spare.lock().expect("poisoned");
        if spare.len() < POOL && buf.capacity() <= POOL_MAX_CAPACITY {
            buf.clear();
            spare.push(buf);
        }
    }

    pub fn close(&self) {
        self.state.lock().expect("poisoned").closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pop(q: &ByteQueue, timeout: Duration) -> Option<Vec<u8>> {
        let mut got = None;
        q.pop_with(timeout, |d, _| got = Some(d.to_vec()));
        got
    }

    #[test]
    fn bounded_by_bytes() {
        let q = ByteQueue::new(10);
        let a: SocketAddr = "1.2.3.4:5".parse().unwrap();
        assert!(q.push(&[1; 6], a));
        assert!(!q.push(&[2; 6], a));
        assert!(q.push(&[3; 4], a));
        assert_eq!(q.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(pop(&q, Duration::ZERO).unwrap(), vec![1; 6]);
        assert_eq!(pop(&q, Duration::ZERO).unwrap(), vec![3; 4]);
        assert!(pop(&q, Duration::from_millis(1)).is_none());
        // Buffers are reused (the pool shrinks by one per push, grows by one per pop), and a
        // reused buffer carries nothing of its last datagram.
        let pooled = q.spare.lock().unwrap().len();
        // Two buffers were ever allocated: the dropped datagram's went back to the pool and the
        // third push reused it; both popped ones are back now.
        assert_eq!(pooled, 2);
        assert!(q.push(&[4; 2], a));
        assert_eq!(q.spare.lock().unwrap().len(), pooled - 1);
        assert_eq!(pop(&q, Duration::ZERO).unwrap(), vec![4; 2]);
        assert_eq!(q.spare.lock().unwrap().len(), pooled);
    }

    #[test]
    fn a_sink_takes_datagrams_instead_of_the_queue_until_cleared() {
        let q = ByteQueue::new(100);
        let a: SocketAddr = "1.2.3.4:5".parse().unwrap();
        let got = std::sync::Arc::new(Mutex::new(Vec::new()));
        let g = std::sync::Arc::clone(&got);
        q.set_sink(Some(std::sync::Arc::new(move |d: &[u8], _| g.lock().unwrap().push(d.to_vec()))));
        assert!(q.push(b"one", a));
        assert!(pop(&q, Duration::ZERO).is_none(), "nothing queued while a sink is set");
        q.set_sink(None);
        assert!(q.push(b"two", a));
        assert_eq!(*got.lock().unwrap(), vec![b"one".to_vec()]);
        assert_eq!(pop(&q, Duration::ZERO).unwrap(), b"two".to_vec());
        assert_eq!(q.delivered.load(Ordering::Relaxed), 2);
        assert_eq!(q.delivered_bytes.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn a_blocked_reader_is_woken() {
        let q = std::sync::Arc::new(ByteQueue::new(100));
        let r = std::sync::Arc::clone(&q);
        let t = std::thread::spawn(move || pop(&r, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(50));
        assert!(q.push(b"x", "1.2.3.4:5".parse().unwrap()));
        assert_eq!(t.join().unwrap(), Some(b"x".to_vec()));
    }
}
