//! The two pieces every transport's receive side is built from: a [`SinkSlot`] (calls into the
//! core without a lock held, catches panics, and can be closed with a guarantee that no call is
//! in progress afterwards) and a [`ReceiveThread`] (stops and joins, except from itself).

use super::DatagramSink;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{JoinHandle, ThreadId};

thread_local! {
    static THREAD_ID: ThreadId = std::thread::current().id();
}

/// The calling thread's id, from a thread-local (no `Thread` handle clone per call: this runs
/// per datagram and per delivered message).
pub fn current_thread_id() -> ThreadId {
    THREAD_ID.with(|id| *id)
}

/// The text of a caught panic's payload (`panic!("...")` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".into())
}

/// The longest [`SinkSlot::close`] waits for calls in progress on other threads.
pub const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

thread_local! {
    /// The slots this thread is inside a call of right now (their addresses), so that
    /// [`SinkSlot::close`] from inside a call does not wait for itself.
    static INSIDE: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Where a transport's receive thread(s) hand datagrams to the core.
///
/// [`SinkSlot::with`] calls the sink with no lock taken at all (two atomic counter updates per
/// call: this runs per datagram); a panic that escapes the sink is caught, counted
/// ([`SinkSlot::panics`]) and logged, and the receive thread goes on. [`SinkSlot::close`] stops
/// further calls and waits for calls in progress on other threads (never for the calling
/// thread's own: a sink may close its own transport, e.g. a callback dropping its node). The
/// sink itself is released with the slot.
pub struct SinkSlot {
    sink: Arc<dyn DatagramSink>,
    /// Cleared by `detach` / `close`: no call starts afterwards.
    open: AtomicBool,
    /// Calls in progress (all threads).
    active: AtomicUsize,
    /// `close` callers waiting; calls ending then wake them through `idle`.
    closing: AtomicUsize,
    wait: Mutex<()>,
    idle: Condvar,
    panics: AtomicU64,
}

impl std::fmt::Debug for SinkSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkSlot").field("panics", &self.panics()).finish_non_exhaustive()
    }
}

impl SinkSlot {
    /// A slot holding `sink`, open.
    pub fn new(sink: Arc<dyn DatagramSink>) -> Self {
        Self {
            sink,
            open: AtomicBool::new(true),
            active: AtomicUsize::new(0),
            closing: AtomicUsize::new(0),
            wait: Mutex::new(()),
            idle: Condvar::new(),
            panics: AtomicU64::new(0),
        }
    }

    fn addr(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// Calls `f` with the sink unless the slot is closed; false when closed.
    pub fn with(&self, f: impl FnOnce(&dyn DatagramSink)) -> bool {
        // Counted in before the flag is read, and `close` clears the flag before it reads the
        // count (both sequentially consistent): either this call sees the slot closed and does
        // not start, or `close` sees it in progress and waits for it.
        self.active.fetch_add(1, Ordering::SeqCst);
        if !self.open.load(Ordering::SeqCst) {
            self.leave();
            return false;
        }
        INSIDE.with(|v| v.borrow_mut().push(self.addr()));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&*self.sink)));
        INSIDE.with(|v| {
            let mut v = v.borrow_mut();
            if let Some(i) = v.iter().rposition(|a| *a == self.addr()) {
                v.remove(i);
            }
        });
        self.leave();
        if let Err(p) = result {
            let n = self.panics.fetch_add(1, Ordering::Relaxed) + 1;
            let what = panic_message(&*p);
            if n == 1 {
                tracing::error!(panic = %what, "panic in the receive path caught; receiving goes on (counted)");
            } else {
                tracing::debug!(panic = %what, count = n, "panic in the receive path caught");
            }
        }
        true
    }

    fn leave(&self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
        if self.closing.load(Ordering::SeqCst) > 0 {
            // Under the waiters' lock, so a `close` between its check and its wait is not missed.
            let _g = self.wait.lock().unwrap_or_else(PoisonError::into_inner);
            self.idle.notify_all();
        }
    }

    /// Stops further calls and waits until no other thread is inside a call to the sink, for
    /// [`CLOSE_WAIT`] at most: a sink call that takes longer (a callback blocked for good, or
    /// two callbacks on two threads each closing the other's transport) makes it give up
    /// waiting, logged at error level, rather than hang. Idempotent.
    pub fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        let own = INSIDE.with(|v| v.borrow().iter().filter(|a| **a == self.addr()).count());
        let mut g = self.wait.lock().unwrap_or_else(PoisonError::into_inner);
        self.closing.fetch_add(1, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + CLOSE_WAIT;
        while self.active.load(Ordering::SeqCst) > own {
            let now = std::time::Instant::now();
            if now >= deadline {
                tracing::error!(
                    wait_s = CLOSE_WAIT.as_secs(),
                    "closing a transport: a receive thread is still inside the node (a callback that does not return?); not waiting longer"
                );
                break;
            }
            g = self.idle.wait_timeout(g, deadline - now).unwrap_or_else(PoisonError::into_inner).0;
        }
        self.closing.fetch_sub(1, Ordering::SeqCst);
    }

    /// Stops further calls without waiting for calls in progress; [`SinkSlot::close`] then
    /// waits.
    pub fn detach(&self) {
        self.open.store(false, Ordering::SeqCst);
    }

    /// The slot has been detached or closed: the transport should stop receiving.
    pub fn is_closed(&self) -> bool {
        !self.open.load(Ordering::SeqCst)
    }

    /// Panics that escaped the sink (a defect of the receive path; user callback panics are
    /// caught and counted per subscriber before they get here).
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }
}

/// A transport's receive thread: runs `f(stop)` until `stop` is set.
#[derive(Debug)]
pub struct ReceiveThread {
    stop: Arc<AtomicBool>,
    handle: Mutex<Option<JoinHandle<()>>>,
    /// Set (and notified) when `f` has returned or unwound: joins wait on it, bounded.
    ended: Arc<(Mutex<bool>, Condvar)>,
}

impl ReceiveThread {
    /// # Errors
    /// The OS could not start a thread.
    pub fn spawn(name: String, f: impl FnOnce(&AtomicBool) + Send + 'static) -> std::io::Result<Self> {
        /// Marks the thread ended however `f` ends, a panic included.
        struct Ended(Arc<(Mutex<bool>, Condvar)>);
        impl Drop for Ended {
            fn drop(&mut self) {
                let (flag, cv) = &*self.0;
                *flag.lock().unwrap_or_else(PoisonError::into_inner) = true;
                cv.notify_all();
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let ended = Arc::new((Mutex::new(false), Condvar::new()));
        let (s, e) = (Arc::clone(&stop), Arc::clone(&ended));
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            let _ended = Ended(e);
            f(&s);
        })?;
        Ok(Self { stop, handle: Mutex::new(Some(handle)), ended })
    }

    /// Sets the stop flag without waiting (then wake the thread, then [`ReceiveThread::stop`]).
    pub fn signal_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Whether the caller is this thread (a callback running on it): it cannot wait for its own
    /// loop.
    pub fn is_current(&self) -> bool {
        let handle = self.handle.lock().unwrap_or_else(PoisonError::into_inner);
        handle.as_ref().is_some_and(|h| h.thread().id() == current_thread_id())
    }

    /// Sets the stop flag and joins the thread, unless called from that thread itself (then it
    /// ends once the current call returns to its loop). Idempotent. Bounded: a thread that has
    /// not ended after [`CLOSE_WAIT`] (a callback blocked for good: [`SinkSlot::close`] has
    /// already given up on it) is left to end by itself, and an error says so.
    pub fn stop(&self) {
        self.stop_within(CLOSE_WAIT);
    }

    /// [`ReceiveThread::stop`] with a bound of `wait` (a caller stopping several threads gives
    /// them one bound together).
    pub fn stop_within(&self, wait: std::time::Duration) {
        self.stop.store(true, Ordering::SeqCst);
        let handle = self.handle.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(h) = handle else { return };
        if h.thread().id() == current_thread_id() {
            return; // detached: it exits by itself
        }
        let name = h.thread().name().unwrap_or("receive").to_string();
        let (flag, cv) = &*self.ended;
        let ended = flag.lock().unwrap_or_else(PoisonError::into_inner);
        let (ended, _) = cv.wait_timeout_while(ended, wait, |e| !*e).unwrap_or_else(PoisonError::into_inner);
        if !*ended {
            drop(ended);
            tracing::error!(thread = %name, waited_s = wait.as_secs_f64(),
                "receive thread did not end (a callback blocked?); left to end by itself");
            return; // the handle is dropped: detached
        }
        drop(ended);
        if h.join().is_err() {
            tracing::error!(thread = %name, "receive thread ended by a panic");
        }
    }
}

impl Drop for ReceiveThread {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    struct Count(AtomicU64, bool);
    impl DatagramSink for Count {
        fn datagram(&self, d: &[u8], _s: SocketAddr, _n: Instant) {
            self.0.fetch_add(1, Ordering::SeqCst);
            if self.1 && d == b"boom" {
                panic!("sink panic");
            }
        }
        fn tick(&self, _n: Instant) {}
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn stopping_a_thread_that_never_ends_gives_up_within_its_bound() {
        // The thread ignores its stop flag until released (a callback blocked for good).
        let release = Arc::new(AtomicBool::new(false));
        let r = Arc::clone(&release);
        let t = ReceiveThread::spawn("mw-test-stuck".into(), move |_stop| {
            while !r.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
        })
        .unwrap();
        let t = Arc::new(t);
        let (tx, rx) = std::sync::mpsc::channel();
        let stopper = Arc::clone(&t);
        std::thread::spawn(move || {
            let started = Instant::now();
            stopper.stop_within(Duration::from_millis(200));
            let _ = tx.send(started.elapsed());
        });
        // Watchdog: an unbounded join would never return here.
        let waited = rx.recv_timeout(Duration::from_secs(5));
        release.store(true, Ordering::SeqCst);
        let waited = waited.expect("stop did not return within 5 s: the join is not bounded");
        assert!(waited >= Duration::from_millis(200), "gave up early: {waited:?}");
        // Stopping again does nothing (the handle is gone), and a thread that ends is joined
        // at once, however long the bound.
        t.stop();
        let quick = ReceiveThread::spawn("mw-test-quick".into(), |stop| {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .unwrap();
        let started = Instant::now();
        quick.stop();
        assert!(started.elapsed() < Duration::from_secs(5), "a thread that ends is joined promptly");
    }

    #[test]
    fn a_panic_in_the_sink_is_caught_and_counted_and_the_slot_keeps_working() {
        let sink = Arc::new(Count(AtomicU64::new(0), true));
        let slot = SinkSlot::new(sink.clone());
        assert!(slot.with(|s| s.datagram(b"boom", addr(), Instant::now())));
        assert!(slot.with(|s| s.datagram(b"ok", addr(), Instant::now())));
        assert_eq!(slot.panics(), 1);
        assert_eq!(sink.0.load(Ordering::SeqCst), 2);
        slot.close();
        assert!(!slot.with(|s| s.datagram(b"late", addr(), Instant::now())), "closed: no call");
        assert_eq!(sink.0.load(Ordering::SeqCst), 2);
        drop(slot);
        assert_eq!(Arc::strong_count(&sink), 1, "the slot's reference goes with the slot");
    }

    #[test]
    fn close_waits_for_a_call_in_progress_on_another_thread_but_not_for_its_own() {
        let slot = Arc::new(SinkSlot::new(Arc::new(Count(AtomicU64::new(0), false))));
        // Closing from inside a call (its own thread) returns at once.
        let s2 = Arc::clone(&slot);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            s2.with(|_| s2.close());
            tx.send(()).unwrap();
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("close from inside the sink deadlocked");

        // Another thread's call in progress is waited for.
        let slot = Arc::new(SinkSlot::new(Arc::new(Count(AtomicU64::new(0), false))));
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let finished = Arc::new(AtomicBool::new(false));
        let (s3, f3) = (Arc::clone(&slot), Arc::clone(&finished));
        let t = std::thread::spawn(move || {
            s3.with(|_| {
                entered_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                f3.store(true, Ordering::SeqCst);
            });
        });
        entered_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let closing = Arc::new(AtomicBool::new(false));
        let closer = {
            let (slot, finished, closing) = (Arc::clone(&slot), Arc::clone(&finished), Arc::clone(&closing));
            std::thread::spawn(move || {
                closing.store(true, Ordering::SeqCst);
                slot.close();
                finished.load(Ordering::SeqCst)
            })
        };
        while !closing.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        // The call is still held: close must not have returned.
        std::thread::sleep(Duration::from_millis(50));
        assert!(!closer.is_finished(), "close returned while another thread was inside the sink");
        release_tx.send(()).unwrap();
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || done_tx.send(closer.join().unwrap()).unwrap());
        assert!(
            done.recv_timeout(Duration::from_secs(5)).expect("close hung"),
            "close returned while a call was still in progress"
        );
        t.join().unwrap();
    }

    #[test]
    fn no_call_is_in_progress_or_starts_once_close_returns_under_contention() {
        struct Late {
            closed: AtomicBool,
            calls: AtomicU64,
            late: AtomicU64,
        }
        impl DatagramSink for Late {
            fn datagram(&self, _d: &[u8], _s: SocketAddr, _n: Instant) {
                self.calls.fetch_add(1, Ordering::SeqCst);
                std::hint::spin_loop();
                if self.closed.load(Ordering::SeqCst) {
                    self.late.fetch_add(1, Ordering::SeqCst);
                }
            }
            fn tick(&self, _n: Instant) {}
        }
        for round in 0..20 {
            let sink =
                Arc::new(Late { closed: AtomicBool::new(false), calls: AtomicU64::new(0), late: AtomicU64::new(0) });
            let slot = Arc::new(SinkSlot::new(sink.clone()));
            let stop = Arc::new(AtomicBool::new(false));
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let (slot, stop) = (Arc::clone(&slot), Arc::clone(&stop));
                    std::thread::spawn(move || {
                        while !stop.load(Ordering::SeqCst) {
                            slot.with(|s| s.datagram(b"x", addr(), Instant::now()));
                        }
                    })
                })
                .collect();
            let deadline = Instant::now() + Duration::from_secs(5);
            while sink.calls.load(Ordering::SeqCst) < 1000 && Instant::now() < deadline {
                std::thread::yield_now();
            }
            slot.close();
            // From here on, a call that sees this flag started after close returned.
            sink.closed.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(2));
            stop.store(true, Ordering::SeqCst);
            for t in threads {
                t.join().unwrap();
            }
            assert!(sink.calls.load(Ordering::SeqCst) >= 1000, "round {round}: the threads never ran");
            assert_eq!(sink.late.load(Ordering::SeqCst), 0, "round {round}: a call ran after close returned");
            assert!(slot.is_closed() && !slot.with(|_| {}));
        }
    }

    #[test]
    fn a_receive_thread_stopped_from_itself_does_not_join_itself() {
        let holder: Arc<Mutex<Option<Arc<ReceiveThread>>>> = Arc::default();
        let h2 = Arc::clone(&holder);
        let (tx, rx) = std::sync::mpsc::channel();
        let t = Arc::new(
            ReceiveThread::spawn("test-rx".into(), move |stop| {
                while h2.lock().unwrap().is_none() {
                    std::thread::yield_now();
                }
                let me = h2.lock().unwrap().take().unwrap();
                me.stop();
                drop(me);
                tx.send(stop.load(Ordering::SeqCst)).unwrap();
            })
            .unwrap(),
        );
        *holder.lock().unwrap() = Some(t);
        assert!(rx.recv_timeout(Duration::from_secs(5)).expect("self-stop deadlocked"));
    }
}
