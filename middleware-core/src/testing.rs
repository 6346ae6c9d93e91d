//! In-process transports for tests: a [`LoopbackBus`] delivers every datagram sent on a port to
//! every transport open on that port (like multicast with loopback on), optionally through a
//! deterministic [`Faults`] injector.

use crate::transport::{
    offload_runs, DatagramSink, Endpoint, Piece, ReceiveThread, SinkSlot, Transport, TransportError, TransportStats,
    TICK,
};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Deterministic fault injection (xorshift with a fixed seed).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Per mille of datagrams dropped.
    pub drop_permille: u32,
    /// Per mille of datagrams delivered twice.
    pub duplicate_permille: u32,
    /// Seed of the generator: the same seed, the same faults for the same sequence of sends.
    pub seed: u64,
    /// [`Transport::send_batch`] delivers each run of [`offload_runs`] as one datagram of
    /// the run's bytes back to back, as a capture sees a segmentation offload buffer before the
    /// device cuts it (and the transport says it has segmentation offload).
    pub coalesce_batches: bool,
}

/// One datagram and its sender.
pub type Datagram = (Vec<u8>, SocketAddr);

/// One open transport's channel on the bus and its drop counter.
type Port = (SyncSender<Datagram>, Arc<AtomicU64>);

#[derive(Debug, Default)]
struct BusState {
    /// Per port: each open transport's channel and its drop counter.
    ports: HashMap<u16, Vec<Port>>,
}

/// A shared medium for [`LoopbackTransport`]s.
#[derive(Debug, Default, Clone)]
pub struct LoopbackBus {
    state: Arc<Mutex<BusState>>,
    next_port: Arc<AtomicU16>,
    faults: Faults,
    rng: Arc<AtomicU64>,
}

impl LoopbackBus {
    /// A bus that delivers everything.
    pub fn new() -> Self {
        Self::with_faults(Faults::default())
    }

    /// A bus that drops and duplicates datagrams as `faults` says.
    pub fn with_faults(faults: Faults) -> Self {
        Self {
            state: Arc::default(),
            next_port: Arc::new(AtomicU16::new(40000)),
            faults,
            rng: Arc::new(AtomicU64::new(faults.seed | 1)),
        }
    }

    fn roll(&self) -> u32 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        (x % 1000) as u32
    }

    /// A factory for [`crate::Node::new`]: the transport delivers to `sink` from a receive
    /// thread of its own, as the socket transport does.
    ///
    /// # Errors
    /// The receive thread could not be started.
    pub fn open(&self, ep: &Endpoint, sink: Arc<dyn DatagramSink>) -> Result<Box<dyn Transport>, TransportError> {
        // Bounded like a socket buffer: beyond it datagrams are dropped (counted as os_dropped).
        let (tx, rx) = sync_channel::<Datagram>(16_384);
        let dropped = Arc::new(AtomicU64::new(0));
        self.state.lock().expect("poisoned").ports.entry(ep.port).or_default().push((tx, Arc::clone(&dropped)));
        let src = SocketAddr::from((Ipv4Addr::LOCALHOST, self.next_port.fetch_add(1, Ordering::Relaxed)));
        let slot = Arc::new(SinkSlot::new(sink));
        let stats: Arc<Mutex<TransportStats>> = Arc::default();
        let (s2, st2) = (Arc::clone(&slot), Arc::clone(&stats));
        let thread = ReceiveThread::spawn(format!("mw-loop-{}", ep.port), move |stop| {
            let mut last_tick = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                match rx.recv_timeout(TICK) {
                    Ok((d, from)) => {
                        {
                            let mut s = st2.lock().expect("poisoned");
                            s.received_datagrams += 1;
                            s.received_bytes += d.len() as u64;
                        }
                        let now = Instant::now();
                        s2.with(|sink| sink.datagram(&d, from, now));
                        if now.duration_since(last_tick) >= TICK {
                            last_tick = now;
                            s2.with(|sink| sink.tick(now));
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        last_tick = Instant::now();
                        s2.with(|sink| sink.tick(last_tick));
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        })
        .map_err(|e| TransportError::io("spawn loopback receive thread", e))?;
        Ok(Box::new(LoopbackTransport {
            bus: self.clone(),
            port: ep.port,
            source: src,
            slot,
            thread,
            stats,
            dropped,
            multicast_loopback: AtomicU64::new(u64::MAX),
        }))
    }

    /// Injects raw bytes as if `from` had sent them to `port` (hostile-input tests).
    pub fn inject(&self, port: u16, from: SocketAddr, bytes: &[u8]) {
        let mut st = self.state.lock().expect("poisoned");
        if let Some(v) = st.ports.get_mut(&port) {
            v.retain(|(tx, dropped)| match tx.try_send((bytes.to_vec(), from)) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    true
                }
                // That transport is gone.
                Err(TrySendError::Disconnected(_)) => false,
            });
        }
    }
}

/// One endpoint on a [`LoopbackBus`].
#[derive(Debug)]
pub struct LoopbackTransport {
    bus: LoopbackBus,
    port: u16,
    source: SocketAddr,
    slot: Arc<SinkSlot>,
    thread: ReceiveThread,
    stats: Arc<Mutex<TransportStats>>,
    /// Datagrams dropped because this transport's channel was full.
    dropped: Arc<AtomicU64>,
    /// The last [`Transport::set_multicast_loopback`] (0 off, 1 on, `u64::MAX` never set),
    /// shown in the stats' `details` as `multicast_loopback` (the bus itself delivers to all).
    multicast_loopback: AtomicU64,
}

impl Drop for LoopbackTransport {
    fn drop(&mut self) {
        self.close();
    }
}

impl Transport for LoopbackTransport {
    fn name(&self) -> &'static str {
        "loopback"
    }

    fn send(&self, header: &[u8], body: &[u8]) -> Result<(), TransportError> {
        let d = [header, body].concat();
        {
            let mut s = self.stats.lock().expect("poisoned");
            s.sent_datagrams += 1;
            s.sent_bytes += d.len() as u64;
        }
        let f = self.bus.faults;
        if f.drop_permille > 0 && self.bus.roll() < f.drop_permille {
            return Ok(());
        }
        let copies = if f.duplicate_permille > 0 && self.bus.roll() < f.duplicate_permille { 2 } else { 1 };
        for _ in 0..copies {
            self.bus.inject(self.port, self.source, &d);
        }
        Ok(())
    }

    fn send_batch(&self, datagrams: &[Piece<'_>]) -> Result<(), TransportError> {
        if !self.bus.faults.coalesce_batches {
            return datagrams.iter().try_for_each(|d| self.send(&d.header, d.body));
        }
        for (run, _) in offload_runs(datagrams) {
            let n = run.len() as u64;
            let d: Vec<u8> = datagrams[run].iter().flat_map(|d| d.header.iter().chain(d.body)).copied().collect();
            self.send(&[], &d)?;
            // Counted as the datagrams the device would cut the buffer into.
            self.stats.lock().expect("poisoned").sent_datagrams += n - 1;
        }
        Ok(())
    }

    fn segmentation_offload(&self) -> bool {
        self.bus.faults.coalesce_batches
    }

    fn join(&self, _group: Ipv4Addr) -> Result<(), TransportError> {
        Ok(())
    }

    fn stats(&self) -> TransportStats {
        let mut s = self.stats.lock().expect("poisoned").clone();
        s.details.insert("sink_panics".into(), self.slot.panics());
        s.os_dropped = self.dropped.load(Ordering::Relaxed);
        let l = self.multicast_loopback.load(Ordering::Relaxed);
        if l != u64::MAX {
            s.details.insert("multicast_loopback".into(), l);
        }
        s
    }

    fn set_multicast_loopback(&self, on: bool) {
        self.multicast_loopback.store(u64::from(on), Ordering::Relaxed);
    }

    fn close(&self) {
        self.slot.close();
        self.thread.stop();
    }
}

/// A sink that collects datagrams into a channel, for transport tests.
#[derive(Debug)]
pub struct CollectSink {
    tx: Mutex<Sender<Datagram>>,
}

impl CollectSink {
    /// The sink and the receiving end of what it collects.
    pub fn new() -> (Arc<Self>, Receiver<Datagram>) {
        let (tx, rx) = channel();
        (Arc::new(Self { tx: Mutex::new(tx) }), rx)
    }
}

impl DatagramSink for CollectSink {
    fn datagram(&self, datagram: &[u8], source: SocketAddr, _now: Instant) {
        let _ = self.tx.lock().expect("poisoned").send((datagram.to_vec(), source));
    }
    fn tick(&self, _now: Instant) {}
}

impl crate::transport::TransportFactory for LoopbackBus {
    fn open(&self, ep: &Endpoint, sink: Arc<dyn DatagramSink>) -> Result<Box<dyn Transport>, TransportError> {
        LoopbackBus::open(self, ep, sink)
    }
}
