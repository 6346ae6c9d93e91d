//! The capture floor of `cargo xtask bench` (pair `capture-floor`): our capture transport
//! (`transport-udp-npcap`, default options: 64 MiB ring, blocks, 2 ms) with none of the
//! middleware core above it. Its sink walks each UDP payload's eCAL datagrams and copies every
//! fragment's body once into a contiguous buffer of the message's own (reserved from the
//! declared total, dropped when complete), as delivery must. No reassembly bookkeeping,
//! protobuf, ordering or callback. So its CPU per message is what the capture loop, the frame
//! decoding and the one copy cost: the floor under the capture subscriber's figure, the rest of
//! which is the core's share.
//!
//! ```text
//! raw_capture [--topic T] --count C --timeout S --idle S
//! ```
//! A node in network mode registers a subscriber of `--topic` (default `bench`) through
//! sockets, so that publishers send. Its data channel is the capture transport, whose datagrams
//! go to the floor's sink instead of the node's. A message counts when all of its declared bytes
//! arrived (fragments assumed in order, as on the bench's link; one not complete when the next
//! begins is counted in `incomplete`). Prints one JSON line (`received`, `first_to_last_s`,
//! `cpu_s`, the transport's counters).

use middleware_core::config::Config;
use middleware_core::pubsub::{Node, Raw};
use middleware_core::transport::{Channel, DatagramSink, Endpoint, Transport, TransportError, TransportFactory};
use middleware_core::wire::{Datagram, DatagramKind, HEADER_LEN, MAX_DATAGRAM_LEN};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string())
}

/// CPU seconds of this process (the process CPU clock, nanoseconds), as the example programs
/// measure it.
fn cpu_seconds() -> Option<f64> {
    cpu_time::ProcessTime::try_now().ok().map(|t| t.as_duration().as_secs_f64())
}

/// Largest message the floor takes, as reassembly's default bound (`max_message_len`).
const MAX_MESSAGE: usize = 128 << 20;

#[derive(Default)]
struct State {
    /// The message being filled: a buffer of its own, as a subscriber's message is.
    buf: Vec<u8>,
    /// The message being filled: its id, declared length and next fragment's index.
    id: i32,
    total: usize,
    next: u32,
    filling: bool,
    /// Messages begun and not completed (another began, a fragment out of turn, the end).
    incomplete: u64,
    /// Datagrams that are not eCAL's, or announce an impossible message.
    malformed: u64,
    /// Fragments of no message being filled, or not the next of it.
    out_of_turn: u64,
    /// Every completed message (tests only).
    #[cfg(test)]
    delivered: Vec<Vec<u8>>,
}

impl State {
    /// Gives up the message being filled, if any.
    fn abandon(&mut self) {
        if std::mem::take(&mut self.filling) {
            self.incomplete += 1;
            self.buf = Vec::new();
        }
    }
}

struct Floor {
    state: Mutex<State>,
    messages: AtomicU64,
    /// Nanoseconds from `base` to the first and the last completed message (0: none yet), read
    /// by the main thread without the state's lock.
    base: Instant,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
}

impl Floor {
    fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            messages: AtomicU64::new(0),
            base: Instant::now(),
            first_ns: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
        }
    }

    fn complete(&self, s: &mut State, now: Instant) {
        // Handed over and dropped, as after a subscriber's callback.
        let message = std::hint::black_box(std::mem::take(&mut s.buf));
        #[cfg(test)]
        s.delivered.push(message);
        #[cfg(not(test))]
        drop(message);
        s.filling = false;
        let ns = (now.saturating_duration_since(self.base).as_nanos() as u64).max(1);
        let _ = self.first_ns.compare_exchange(0, ns, Ordering::Relaxed, Ordering::Relaxed);
        self.last_ns.store(ns, Ordering::Relaxed);
        self.messages.fetch_add(1, Ordering::Relaxed);
    }

    fn at(&self, ns: &AtomicU64) -> Option<Instant> {
        let ns = ns.load(Ordering::Relaxed);
        (ns > 0).then(|| self.base + Duration::from_nanos(ns))
    }
}

impl DatagramSink for Floor {
    fn datagram(&self, payload: &[u8], _source: SocketAddr, now: Instant) {
        let mut s = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = &mut *s;
        // One eCAL datagram, or several back to back (a segmentation offload buffer seen uncut).
        // `new_checked` guarantees the header and, for types 2 and 3, the `len` bytes after it.
        let mut rest = payload;
        while !rest.is_empty() {
            let Ok(d) = Datagram::new_checked(rest) else {
                s.malformed += 1;
                return;
            };
            let (kind, id, num, len) = (d.kind(), d.id(), d.num(), d.len() as usize);
            match kind {
                DatagramKind::FragmentInfo => {
                    s.abandon();
                    // What reassembly accepts: at least one byte per fragment, at most a whole
                    // datagram's, within the bound.
                    let count = num as usize;
                    if count == 0 || len < count || len > MAX_MESSAGE || count.saturating_mul(MAX_DATAGRAM_LEN) < len {
                        s.malformed += 1;
                        return;
                    }
                    // Reserved once, as reassembly reserves the declared total.
                    s.buf = Vec::with_capacity(len);
                    (s.id, s.total, s.next, s.filling) = (id, len, 0, true);
                    rest = &rest[HEADER_LEN..];
                }
                DatagramKind::Fragment => {
                    // In turn on the bench's link; anything else is counted, not reordered.
                    if s.filling && id == s.id && num == s.next && s.buf.len() + len <= s.total {
                        s.buf.extend_from_slice(&rest[HEADER_LEN..HEADER_LEN + len]);
                        s.next += 1;
                        if s.buf.len() == s.total {
                            self.complete(s, now);
                        }
                    } else {
                        s.out_of_turn += 1;
                        s.abandon();
                    }
                    rest = &rest[HEADER_LEN + len..];
                }
                DatagramKind::Whole => {
                    s.abandon();
                    s.buf = rest[HEADER_LEN..HEADER_LEN + len].to_vec();
                    self.complete(s, now);
                    rest = &rest[HEADER_LEN + len..];
                }
                DatagramKind::Unknown(_) => {
                    s.malformed += 1;
                    return;
                }
            }
        }
    }

    fn tick(&self, _now: Instant) {}
}

fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("raw_capture: {e}");
    std::process::exit(1)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!("usage: raw_capture [--topic T] [--count C] [--timeout S] [--idle S]");
        return;
    }
    let count: u64 = arg(&args, "--count", "1000").parse().expect("--count");
    let timeout: f64 = arg(&args, "--timeout", "30").parse().expect("--timeout");
    let idle: f64 = arg(&args, "--idle", "2").parse().expect("--idle");
    // Configured as the example programs are (MW_CONFIG, MW_* variables: the same npcap options
    // as the subscriber it is compared with), in network mode.
    let mut cfg = match Config::load(None) {
        Ok(c) => c,
        Err(e) => fail(&e),
    };
    cfg.set("mode", "network").expect("mode");
    let npcap = match transport_udp_npcap::NpcapFactory::new(&cfg) {
        Ok(f) => f,
        Err(e) => fail(&e),
    };
    let floor = Arc::new(Floor::new());
    // A node whose registration goes through sockets, as usual, so that publishers see a
    // subscriber and send; its data channel is the capture transport feeding the floor's sink
    // instead of the node's.
    let factory = {
        let floor = floor.clone();
        move |ep: &Endpoint, sink: Arc<dyn DatagramSink>| -> Result<Box<dyn Transport>, TransportError> {
            match ep.channel {
                Channel::Registration => {
                    Ok(Box::new(transport_udp_socket::UdpSocketTransport::open(ep, sink)?) as Box<dyn Transport>)
                }
                Channel::Data => npcap.open(ep, floor.clone()),
            }
        }
    };
    let node = match Node::new(cfg, &factory) {
        Ok(n) => n,
        Err(e) => fail(&e),
    };
    let subscriber = match node.subscriber::<Raw>(&arg(&args, "--topic", "bench")) {
        Ok(s) => s,
        Err(e) => fail(&e),
    };
    let end = Instant::now() + Duration::from_secs_f64(timeout);
    while floor.messages.load(Ordering::Relaxed) < count && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
        if floor.at(&floor.last_ns).is_some_and(|l| l.elapsed().as_secs_f64() >= idle) {
            break;
        }
    }
    let stats = node.stats().data.transport;
    drop(subscriber);
    drop(node);
    let mut s = floor.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    s.abandon();
    let line = serde_json::json!({"role": "sub", "impl": "capture-floor",
        "received": floor.messages.load(Ordering::Relaxed), "incomplete": s.incomplete, "malformed": s.malformed,
        "out_of_turn": s.out_of_turn,
        "first_to_last_s": floor.at(&floor.first_ns).zip(floor.at(&floor.last_ns)).map(|(f, l)| (l - f).as_secs_f64()),
        "cpu_s": cpu_seconds(), "transport": stats});
    println!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use middleware_core::fragment::split;

    fn floor() -> Floor {
        Floor::new()
    }

    /// The datagrams of `message` cut at `max` bytes: the info datagram alone, then the
    /// fragments back to back in one buffer (a segmentation offload buffer seen uncut).
    fn datagrams(message: &[u8], max: usize, id: i32) -> (Vec<u8>, Vec<u8>) {
        let mut pieces = split(message, max, id).unwrap();
        let info = pieces.next().unwrap();
        let run = pieces.flat_map(|p| [&p.header[..], p.body].concat()).collect();
        ([&info.header[..], info.body].concat(), run)
    }

    #[test]
    fn every_byte_of_a_message_is_copied_once_into_its_own_buffer() {
        let f = floor();
        let src: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let a: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let b: Vec<u8> = (0..3_000u32).map(|i| (i * 13) as u8).collect();
        for (m, id) in [(&a, 1), (&b, 2)] {
            let (info, run) = datagrams(m, 1472, id);
            f.datagram(&info, src, Instant::now());
            // In two payloads, the first ending on a datagram boundary.
            let cut = 2 * (HEADER_LEN + 1448);
            f.datagram(&run[..cut], src, Instant::now());
            f.datagram(&run[cut..], src, Instant::now());
        }
        let whole = split(b"small", 1472, 3).unwrap().map(|p| [&p.header[..], p.body].concat()).next().unwrap();
        f.datagram(&whole, src, Instant::now());
        let s = f.state.lock().unwrap();
        assert_eq!(s.delivered, vec![a, b, b"small".to_vec()]);
        assert_eq!(f.messages.load(Ordering::Relaxed), 3);
        assert_eq!((s.incomplete, s.malformed, s.out_of_turn), (0, 0, 0));
        assert!(f.at(&f.first_ns).unwrap() <= f.at(&f.last_ns).unwrap());
    }

    #[test]
    fn a_message_cut_short_or_unannounced_is_not_counted_and_bad_datagrams_are() {
        let f = floor();
        let src: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let m = vec![9u8; 5_000];
        let (info, run) = datagrams(&m, 1472, 1);
        f.datagram(&info, src, Instant::now());
        f.datagram(&run[..HEADER_LEN + 1448], src, Instant::now());
        // The next message begins before the first completed.
        f.datagram(&info, src, Instant::now());
        f.datagram(&run, src, Instant::now());
        // Fragments with no message announced (its four, repeated) are not a message.
        f.datagram(&run, src, Instant::now());
        f.datagram(b"not ecal at all, long enough for a header", src, Instant::now());
        let s = f.state.lock().unwrap();
        assert_eq!(f.messages.load(Ordering::Relaxed), 1);
        assert_eq!(s.delivered, vec![m]);
        assert_eq!((s.incomplete, s.malformed, s.out_of_turn), (1, 1, 4));
    }

    #[test]
    fn odd_and_hostile_datagrams_are_counted_without_a_panic_or_a_huge_reservation() {
        use middleware_core::wire::DatagramRepr;
        let f = floor();
        let src: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let send = |b: &[u8]| f.datagram(b, src, Instant::now());
        let info = |id, count, total_len| DatagramRepr::FragmentInfo { id, count, total_len }.to_bytes().to_vec();
        let frag = |id, index, body: &[u8]| {
            [&DatagramRepr::Fragment { id, index, len: body.len() as u32 }.to_bytes()[..], body].concat()
        };
        // Impossible announcements: nothing reserved, nothing filling.
        send(&info(1, 1, u32::MAX));
        send(&info(1, 0, 10));
        send(&info(1, 5, 3));
        {
            let s = f.state.lock().unwrap();
            assert_eq!((s.buf.capacity(), s.filling), (0, false));
        }
        // A body declared longer than the datagram; an unknown type.
        let mut short = frag(1, 0, &[1; 100]);
        short.truncate(60);
        send(&short);
        let mut unknown = frag(1, 0, &[1; 10]);
        unknown[8] = 9;
        send(&unknown);
        // Out of turn: another id, then a skipped index; each abandons the message.
        send(&info(2, 2, 20));
        send(&frag(3, 0, &[1; 10]));
        send(&info(2, 2, 20));
        send(&frag(2, 1, &[1; 10]));
        // A whole message while one is being filled; trailing bytes after it.
        send(&info(4, 2, 20));
        send(&frag(4, 0, &[4; 10]));
        send(&[&DatagramRepr::Whole { len: 3 }.to_bytes()[..], b"abc", b"xyz"].concat());
        // A fragment past the declared total.
        send(&info(5, 2, 20));
        send(&[frag(5, 0, &[5; 10]), frag(5, 1, &[5; 11])].concat());
        let s = f.state.lock().unwrap();
        assert_eq!(s.delivered, vec![b"abc".to_vec()]);
        assert_eq!(f.messages.load(Ordering::Relaxed), 1);
        // 3 announcements, the short and the unknown datagram, the trailing bytes.
        assert_eq!(s.malformed, 6);
        assert_eq!(s.out_of_turn, 3);
        assert_eq!(s.incomplete, 4);
    }
}
