//! A byte-bounded queue between the capture thread and a channel's receive thread: the
//! capture path's equivalent of a socket receive buffer. Overflow drops the new datagram and
//! counts it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct State {
    items: VecDeque<(Vec<u8>, SocketAddr)>,
    bytes: usize,
    closed: bool,
}

#[derive(Debug)]
pub struct ByteQueue {
    state: Mutex<State>,
    ready: Condvar,
    capacity: usize,
    pub dropped: AtomicU64,
}

impl ByteQueue {
    pub fn new(capacity: usize) -> Self {
        Self { state: Mutex::default(), ready: Condvar::new(), capacity, dropped: AtomicU64::new(0) }
    }

    /// Queues a copy of `payload`; false (and counted) when the queue is full.
    pub fn push(&self, payload: &[u8], from: SocketAddr) -> bool {
        let mut s = self.state.lock().expect("poisoned");
        if s.bytes + payload.len() > self.capacity {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        s.bytes += payload.len();
        s.items.push_back((payload.to_vec(), from));
        drop(s);
        self.ready.notify_one();
        true
    }

    /// Waits up to `timeout` for a datagram; `None` on timeout or when closed and empty.
    pub fn pop(&self, timeout: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        let end = Instant::now() + timeout;
        let mut s = self.state.lock().expect("poisoned");
        loop {
            if let Some(item) = s.items.pop_front() {
                s.bytes -= item.0.len();
                return Some(item);
            }
            let now = Instant::now();
            if s.closed || now >= end {
                return None;
            }
            s = self.ready.wait_timeout(s, end - now).expect("poisoned").0;
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

    #[test]
    fn bounded_by_bytes() {
        let q = ByteQueue::new(10);
        let a: SocketAddr = "1.2.3.4:5".parse().unwrap();
        assert!(q.push(&[1; 6], a));
        assert!(!q.push(&[2; 6], a));
        assert!(q.push(&[3; 4], a));
        assert_eq!(q.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(q.pop(Duration::ZERO).unwrap().0, vec![1; 6]);
        assert_eq!(q.pop(Duration::ZERO).unwrap().0, vec![3; 4]);
        assert!(q.pop(Duration::from_millis(1)).is_none());
    }
}
