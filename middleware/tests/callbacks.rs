//! User callbacks are untrusted, on every transport: a panicking callback is caught and counted
//! and everyone keeps receiving; a callback may drop its own subscriber, create and drop other
//! entities, call `on_receive` again, or drop the whole node, without deadlock. Every scenario
//! runs under a watchdog (a deadlock fails in seconds) on the in-process loopback transport, the
//! socket transport and the capture transport (local mode; capture needs root or
//! CAP_NET_RAW + CAP_NET_ADMIN, which CI has: without them that test fails and says so).

use middleware::{Config, Node, Publisher, Raw, Subscriber};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
enum Kind {
    Loopback,
    Socket,
    Npcap,
}

static NEXT: AtomicU16 = AtomicU16::new(0);

/// Opens nodes of one kind that hear each other (same bus / same ports).
struct World {
    kind: Kind,
    config: Config,
    bus: middleware_core::testing::LoopbackBus,
}

impl World {
    fn new(kind: Kind) -> Self {
        // Ports unique per scenario and process: 2000 + 2 * ((pid mod 500) * 16 + n) <= 17998,
        // below Linux's ephemeral range (32768-60999), where any socket bound to port 0 (a
        // sender's) may sit first and make the bind fail.
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % 16;
        let base = 2_000 + 2 * ((std::process::id() % 500) as u16 * 16 + n);
        let mut c = Config::default();
        c.set("mode", "local").unwrap();
        c.set("ports.registration", &base.to_string()).unwrap();
        c.set("ports.data", &(base + 1).to_string()).unwrap();
        c.set("registration.refresh_ms", "100").unwrap();
        c.set(
            "transport",
            match kind {
                Kind::Npcap => "npcap",
                _ => "socket",
            },
        )
        .unwrap();
        Self { kind, config: c, bus: middleware_core::testing::LoopbackBus::new() }
    }

    fn node(&self) -> Node {
        match self.kind {
            Kind::Loopback => Node::new(self.config.clone(), &self.bus).unwrap(),
            Kind::Socket => middleware::open_node(self.config.clone()).unwrap(),
            Kind::Npcap => middleware::open_node(self.config.clone()).unwrap_or_else(|e| {
                panic!("the capture transport cannot open here ({e}); these tests need root or CAP_NET_RAW+CAP_NET_ADMIN (CI runs as root)")
            }),
        }
    }
}

/// Runs `f` on its own thread; fails when it does not finish within `secs` (a deadlock).
fn watchdog(name: &str, secs: u64, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            f();
            let _ = tx.send(());
        })
        .unwrap();
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => {}
        Err(RecvTimeoutError::Timeout) => panic!("{name}: not done within {secs} s: deadlock"),
        Err(RecvTimeoutError::Disconnected) => panic!("{name}: failed (its panic is printed above)"),
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn connected(p: &Publisher<Raw>) {
    assert!(p.wait_for_subscriber(WAIT), "publisher of {} never connected", p.topic());
}

fn send_paced(p: &Publisher<Raw>, n: u8) {
    for k in 0..n {
        assert!(p.send(&[k; 100]).unwrap(), "send {k}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A's callback panics on its second message; A keeps being called, B gets every message.
fn panicking_callback(kind: Kind) {
    let w = World::new(kind);
    let node = w.node();
    let (a, b) = (node.subscriber::<Raw>("panics").unwrap(), node.subscriber::<Raw>("panics").unwrap());
    let (a_calls, b_calls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let ac = Arc::clone(&a_calls);
    a.on_receive(move |_| {
        if ac.fetch_add(1, Ordering::SeqCst) + 1 == 2 {
            panic!("A panics on its second message");
        }
    });
    let bc = Arc::clone(&b_calls);
    b.on_receive(move |_| {
        bc.fetch_add(1, Ordering::SeqCst);
    });
    let p = node.publisher::<Raw>("panics").unwrap();
    connected(&p);
    send_paced(&p, 10);
    wait_until("B's 10 messages", || b_calls.load(Ordering::SeqCst) == 10);
    wait_until("A's 10 calls", || a_calls.load(Ordering::SeqCst) == 10);
    assert_eq!(a.stats().callback_panics, 1, "{:?}", a.stats());
    assert_eq!(b.stats().callback_panics, 0, "{:?}", b.stats());
    assert_eq!((a.stats().delivered, b.stats().delivered), (10, 10));
    // Receiving goes on after the panic, and the node still shuts down cleanly.
    assert!(p.send(&[42; 10]).unwrap());
    wait_until("B's 11th message", || b_calls.load(Ordering::SeqCst) == 11);
}

/// A callback creates and drops other entities, then drops its own subscriber: no deadlock, it
/// is not called again, and another subscriber of the topic receives everything.
fn callback_drops_its_subscriber(kind: Kind) {
    let w = World::new(kind);
    let node = Arc::new(w.node());
    let slot: Arc<Mutex<Option<Subscriber<Raw>>>> = Arc::default();
    let (events, seen) = channel();
    let sub = node.subscriber::<Raw>("self_drop").unwrap();
    let (n2, s2) = (Arc::clone(&node), Arc::clone(&slot));
    let events = Mutex::new(events);
    sub.on_receive(move |m| {
        let p = n2.publisher::<Raw>("other").unwrap();
        let s = n2.subscriber::<Raw>("other").unwrap();
        drop((p, s));
        let mine = s2.lock().unwrap().take();
        drop(mine);
        events.lock().unwrap().send(m.value).unwrap();
    });
    *slot.lock().unwrap() = Some(sub);
    let witness = node.subscriber::<Raw>("self_drop").unwrap();
    let p = node.publisher::<Raw>("self_drop").unwrap();
    // Both subscribers known to the publisher: when the first drops itself, the witness keeps
    // the publisher connected (with only the first one heard yet, it would send into nothing).
    wait_until("the publisher to know both subscribers", || p.connections().0 == 2);
    send_paced(&p, 3);
    for k in 0..3u8 {
        assert_eq!(witness.recv_timeout(WAIT).expect("witness receives").value, vec![k; 100]);
    }
    assert_eq!(seen.recv_timeout(WAIT).unwrap(), vec![0; 100]);
    assert!(seen.recv_timeout(Duration::from_millis(200)).is_err(), "called after it dropped its subscriber");
    assert!(slot.lock().unwrap().is_none());
}

/// A callback replaces itself with `on_receive`; the new callback gets the rest, in order.
fn callback_calls_on_receive(kind: Kind) {
    let w = World::new(kind);
    let node = w.node();
    let sub = Arc::new(node.subscriber::<Raw>("rearm").unwrap());
    let (first, second) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let (f2, s2, sub2) = (Arc::clone(&first), Arc::clone(&second), Arc::clone(&sub));
    sub.on_receive(move |m| {
        f2.lock().unwrap().push(m.value[0]);
        let s3 = Arc::clone(&s2);
        sub2.on_receive(move |m| s3.lock().unwrap().push(m.value[0]));
    });
    let p = node.publisher::<Raw>("rearm").unwrap();
    connected(&p);
    send_paced(&p, 5);
    wait_until("4 messages for the second callback", || second.lock().unwrap().len() == 4);
    assert_eq!(*first.lock().unwrap(), vec![0]);
    assert_eq!(*second.lock().unwrap(), vec![1, 2, 3, 4]);
}

/// A callback drops its node and its own subscriber, the last references to that node: its
/// transports go away on their own receive thread. Another node keeps working.
fn callback_drops_the_node(kind: Kind) {
    let w = World::new(kind);
    let (a, b) = (w.node(), w.node());
    let sub = a.subscriber::<Raw>("drop_node").unwrap();
    type Slot = Arc<Mutex<Option<(Node, Option<Subscriber<Raw>>)>>>;
    let slot: Slot = Arc::default();
    let (done_tx, done) = channel();
    let (s2, done_tx) = (Arc::clone(&slot), Mutex::new(done_tx));
    sub.on_receive(move |_| {
        let all = s2.lock().unwrap().take();
        if let Some(all) = all {
            drop(all);
            done_tx.lock().unwrap().send(()).unwrap();
        }
    });
    *slot.lock().unwrap() = Some((a, Some(sub)));
    let p = b.publisher::<Raw>("drop_node").unwrap();
    connected(&p);
    assert!(p.send(&[1; 100]).unwrap());
    done.recv_timeout(WAIT).expect("the callback dropped the node and returned");
    // The other node and a new one still exchange messages on the same ports.
    let s = b.subscriber::<Raw>("after").unwrap();
    let c = w.node();
    let q = c.publisher::<Raw>("after").unwrap();
    assert!(q.wait_for_subscriber(WAIT));
    assert!(q.send(b"again").unwrap());
    assert_eq!(s.recv_timeout(WAIT).expect("receiving goes on").value, b"again");
}

fn all(kind: Kind) {
    type Scenario = (&'static str, fn(Kind));
    let scenarios: [Scenario; 4] = [
        ("panicking callback", panicking_callback),
        ("callback drops its subscriber", callback_drops_its_subscriber),
        ("callback calls on_receive", callback_calls_on_receive),
        ("callback drops the node", callback_drops_the_node),
    ];
    for (name, f) in scenarios {
        watchdog(&format!("{kind:?}: {name}"), 30, move || f(kind));
    }
}

#[test]
fn loopback_callbacks_cannot_break_receiving() {
    all(Kind::Loopback);
}

#[test]
fn socket_callbacks_cannot_break_receiving() {
    all(Kind::Socket);
}

#[test]
fn npcap_callbacks_cannot_break_receiving() {
    all(Kind::Npcap);
}
