//! In-process transports for tests: a [`LoopbackBus`] delivers every datagram sent on a port to
//! every transport open on that port (like multicast with loopback on), optionally through a
//! deterministic [`Faults`] injector.

use crate::transport::{Endpoint, RecvMeta, Transport, TransportError, TransportStats};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Deterministic fault injection (xorshift with a fixed seed).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Per mille of datagrams dropped.
    pub drop_permille: u32,
    /// Per mille of datagrams delivered twice.
    pub duplicate_permille: u32,
    pub seed: u64,
}

type Datagram = (Vec<u8>, SocketAddr);

#[derive(Debug, Default)]
struct BusState {
    ports: HashMap<u16, Vec<Sender<Datagram>>>,
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
    pub fn new() -> Self {
        Self::with_faults(Faults::default())
    }

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

    /// A factory for [`crate::Node::new`].
    pub fn open(&self, ep: &Endpoint) -> Result<Box<dyn Transport>, TransportError> {
        let (tx, rx) = channel();
        self.state.lock().expect("poisoned").ports.entry(ep.port).or_default().push(tx);
        let src = SocketAddr::from((Ipv4Addr::LOCALHOST, self.next_port.fetch_add(1, Ordering::Relaxed)));
        Ok(Box::new(LoopbackTransport {
            bus: self.clone(),
            port: ep.port,
            source: src,
            rx: Mutex::new(rx),
            stats: Mutex::default(),
        }))
    }

    /// Injects raw bytes as if `from` had sent them to `port` (hostile-input tests).
    pub fn inject(&self, port: u16, from: SocketAddr, bytes: &[u8]) {
        let st = self.state.lock().expect("poisoned");
        for tx in st.ports.get(&port).into_iter().flatten() {
            let _ = tx.send((bytes.to_vec(), from));
        }
    }
}

/// One endpoint on a [`LoopbackBus`].
#[derive(Debug)]
pub struct LoopbackTransport {
    bus: LoopbackBus,
    port: u16,
    source: SocketAddr,
    rx: Mutex<Receiver<Datagram>>,
    stats: Mutex<TransportStats>,
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

    fn recv(&self, buf: &mut [u8], timeout: Duration) -> Result<Option<RecvMeta>, TransportError> {
        let rx = self.rx.lock().expect("poisoned");
        match rx.recv_timeout(timeout) {
            Ok((d, from)) => {
                let mut s = self.stats.lock().expect("poisoned");
                if d.len() > buf.len() {
                    s.truncated += 1;
                    return Ok(None);
                }
                buf[..d.len()].copy_from_slice(&d);
                s.received_datagrams += 1;
                s.received_bytes += d.len() as u64;
                Ok(Some(RecvMeta::new(d.len(), from)))
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(TransportError::Closed),
        }
    }

    fn join(&self, _group: Ipv4Addr) -> Result<(), TransportError> {
        Ok(())
    }

    fn stats(&self) -> TransportStats {
        self.stats.lock().expect("poisoned").clone()
    }
}
