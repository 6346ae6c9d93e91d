//! Bodies of the fuzz targets (`fuzz/`), kept in the library so that ordinary tests replay every
//! input the fuzzers ever crashed on (`tests/fuzz_regressions.rs`). Each body takes arbitrary
//! bytes, drives one decoder or reassembler the way the network would, and asserts the
//! invariants that must hold for any input: no panic, memory within the configured caps,
//! decoded values that re-encode to themselves.

use crate::fragment::{Outcome, Reassembler, ReassemblyConfig};
use crate::pb::{decode_without_payload, locate_payload, Sample};
use crate::registration::{Acceptance, RemoteTable, MAX_REMOTE_ENTITIES, MAX_REMOTE_PROCESSES};
use crate::wire::SampleFrame;
use prost::Message;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

/// Splits fuzz input into records: a control byte, then a length-prefixed (u16 LE) body.
pub fn records(mut data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (&ctl, rest) = data.split_first()?;
        let len = rest.get(..2).map_or(rest.len(), |l| usize::from(u16::from_le_bytes([l[0], l[1]])));
        let rest = rest.get(2..).unwrap_or(&[]);
        let (body, tail) = rest.split_at(len.min(rest.len()));
        data = tail;
        Some((ctl, body))
    })
}

/// Datagrams from up to four senders into one reassembler with small caps; the control byte
/// picks the sender and advances the clock (expiry). Every completed message is decoded as a
/// sample frame and protobuf `Sample`.
pub fn datagrams(data: &[u8]) {
    let cfg = ReassemblyConfig {
        timeout: Duration::from_millis(100),
        max_message_len: 1 << 20,
        max_partial_messages: 8,
        max_buffered_bytes: 2 << 20,
    };
    // As the data channel runs it: a data message's payload reassembled apart when its first
    // fragment shows where it lies.
    let mut r = Reassembler::with_splitter(cfg.clone(), |first| locate_payload(first).map(|s| s.payload_range()));
    let t0 = Instant::now();
    let mut now = t0;
    for (ctl, body) in records(data) {
        now += Duration::from_millis(u64::from(ctl >> 2) * 3);
        let sender = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1 + (ctl & 3)), 14002));
        // A UDP payload may be an offload buffer of equal eCAL datagrams seen uncut: cut as the
        // data channel cuts it, into pieces that are each exactly one datagram.
        match crate::wire::coalesced_segment_len(body) {
            Some(s) => {
                assert!(s >= crate::wire::HEADER_LEN && s < body.len(), "segment {s} of {}", body.len());
                for piece in body.chunks(s) {
                    assert!(crate::wire::Datagram::new_checked(piece).is_ok(), "a piece that is no datagram");
                    datagram(&mut r, &cfg, now, sender, piece);
                }
            }
            None => datagram(&mut r, &cfg, now, sender, body),
        }
    }
    r.expire(now + cfg.timeout * 2);
    assert_eq!((r.partial_messages(), r.buffered_bytes()), (0, 0), "everything expires");
}

/// One datagram of [`datagrams`] into the reassembler, with the caps checked after it.
fn datagram(r: &mut Reassembler, cfg: &ReassemblyConfig, now: Instant, sender: SocketAddr, body: &[u8]) {
    match r.on_datagram(now, sender, body) {
        Outcome::Message(m) => {
            assert!(m.len() <= cfg.max_message_len, "message of {} bytes above the cap", m.len());
            sample(&m);
        }
        Outcome::Split(m) => {
            let whole = m.joined();
            assert!(whole.len() <= cfg.max_message_len, "message of {} bytes above the cap", whole.len());
            assert_eq!(
                locate_payload(&m.head).map(|s| s.payload),
                Some((m.head.len(), m.head.len() + m.payload.len()))
            );
            sample(&whole);
        }
        Outcome::Pending | Outcome::Dropped => {}
    }
    assert!(r.partial_messages() <= cfg.max_partial_messages, "{} partial messages", r.partial_messages());
    assert!(r.buffered_bytes() <= cfg.max_buffered_bytes, "{} bytes buffered", r.buffered_bytes());
}

/// One reassembled message: sample frame, then protobuf. A decoded `Sample` re-encodes to bytes
/// that decode to the same value (compared as bytes: statistics may hold NaN, which is not
/// equal to itself).
pub fn sample(message: &[u8]) {
    let Ok(frame) = SampleFrame::new_checked(message) else { return };
    let _ = frame.name();
    if let Ok(s) = Sample::decode(frame.body()) {
        let bytes = s.encode_to_vec();
        let again = Sample::decode(bytes.as_slice()).expect("re-encoded sample decodes");
        assert_eq!(again.encode_to_vec(), bytes);
    }
    split_agrees(message);
}

/// A message split around its payload (as the data channel reassembles it) decodes, parts and
/// payload apart, exactly as the whole message does, or is refused (then decoded whole).
fn split_agrees(message: &[u8]) {
    let Some(span) = locate_payload(message) else { return };
    let Some(tail) = message.get(span.payload.1..) else { return };
    let head = &message[..span.payload.0];
    let whole = Sample::decode(&message[span.body_start..]);
    match decode_without_payload(head, &span, tail) {
        None => {}
        Some(Ok(mut parts)) => {
            parts.content.as_mut().expect("the split found a content").payload =
                message[span.payload_range()].to_vec().into();
            let whole = whole.expect("the whole message decodes where its parts do");
            assert_eq!(parts.encode_to_vec(), whole.encode_to_vec(), "split and whole decodes differ");
        }
        Some(Err(_)) => assert!(whole.is_err(), "the parts fail to decode where the whole message decodes"),
    }
}

/// The remote tables' byte budget in [`registration`].
const BUDGET: usize = 256 << 10;

/// Registration samples (protobuf) into the remote table, as this host in network and local
/// mode: never a panic, the table bounded in entries and bytes (the charged total always equal
/// to the entries' own count, all of it given back when they expire). Each record is applied to two tables: one decodes and
/// applies every sample, the other takes the node's fast path (a sample whose fingerprint matches
/// the last one applied is only refreshed); both must end every step in the same state, and the
/// fingerprint maps hold at most one entry per table entry.
pub fn registration(data: &[u8]) {
    let Some((&mode, data)) = data.split_first() else { return };
    let accept = if mode & 1 == 0 {
        Acceptance { host_name: "here".into(), process_id: 1, network_mode: true, loopback: false }
    } else {
        Acceptance { host_name: "here".into(), process_id: 1, network_mode: false, loopback: true }
    };
    // A small byte budget, so that large descriptors reach it.
    let mut plain = RemoteTable::with_budget(BUDGET);
    let mut fast = RemoteTable::with_budget(BUDGET);
    let t0 = Instant::now();
    for (i, (ctl, body)) in records(data).enumerate() {
        // Records flagged by the control byte arrive twice in a row, as eCAL resends them.
        for _ in 0..=(ctl & 1) {
            let now = t0 + Duration::from_millis(i as u64);
            let decoded = Sample::decode(body);
            let want = decoded.as_ref().ok().map(|s| plain.on_sample(now, s, &accept));
            let fp = fast.fingerprint(body);
            let got = match fast.refresh_unchanged(now, fp) {
                Some(change) => Some(Ok(change)),
                None => decoded.as_ref().ok().map(|s| fast.on_sample_fingerprinted(now, s, &accept, Some(fp))),
            };
            assert_eq!(got, want, "the fast path answers as decoding does");
            assert_same(&plain, &fast);
            let (fingerprints, fingerprint_of) = fast.fingerprint_entries();
            assert!(fingerprint_of <= fast.entities().count() + fast.processes().count());
            assert!(fingerprints <= fingerprint_of, "{fingerprints} fingerprints for {fingerprint_of} entries");
            for t in [&plain, &fast] {
                assert!(t.bytes() <= BUDGET, "{} bytes charged", t.bytes());
                assert_eq!(t.bytes(), t.recount(), "the byte count drifted from the entries");
            }
        }
    }
    for table in [&mut plain, &mut fast] {
        assert!(table.entities().count() <= MAX_REMOTE_ENTITIES && table.processes().count() <= MAX_REMOTE_PROCESSES);
        table.expire(t0 + Duration::from_secs(3600), Duration::from_secs(10));
        assert_eq!((table.entities().count(), table.processes().count()), (0, 0), "everything expires");
        assert_eq!(table.fingerprint_entries(), (0, 0), "fingerprints expire with their entries");
        assert_eq!(table.bytes(), 0, "every byte is given back");
    }
}

fn assert_same(a: &RemoteTable, b: &RemoteTable) {
    let entities = |t: &RemoteTable| {
        let mut v: Vec<_> = t.entities().cloned().collect();
        v.sort_by_key(|e| e.entity_id);
        v
    };
    let processes = |t: &RemoteTable| {
        let mut v: Vec<_> = t.processes().cloned().collect();
        v.sort_by(|x, y| (&x.host_name, x.process_id).cmp(&(&y.host_name, y.process_id)));
        v
    };
    assert!(entities(a) == entities(b), "entities differ");
    assert!(processes(a) == processes(b), "processes differ");
}

/// Mutations of valid inputs (real captured traffic) for property tests: the tests draw the
/// mutations, this applies them and frames the result for the bodies above.
pub mod mutate {
    /// One mutation of an input.
    #[derive(Debug, Clone)]
    pub enum Mutation {
        /// Flip bit `bit` (0..8) of the byte at `at` (modulo the length).
        Flip {
            /// Byte position.
            at: usize,
            /// Bit.
            bit: u8,
        },
        /// Keep the first `len` bytes (modulo the length + 1).
        Truncate {
            /// Bytes kept.
            len: usize,
        },
        /// Overwrite 4 bytes at `at` with `value` (little endian), e.g. a header's id, count or
        /// length.
        Overwrite {
            /// Position (modulo the length - 3).
            at: usize,
            /// The bytes written.
            value: u32,
        },
        /// Replace everything from `at` with the tail of input `other` of the pool from `from`.
        Splice {
            /// Where this input is cut.
            at: usize,
            /// Which input gives the tail.
            other: usize,
            /// Where that tail begins.
            from: usize,
        },
    }

    /// `input` with `m` applied; `pool` gives the tails of splices.
    pub fn apply(input: &[u8], m: &Mutation, pool: &[Vec<u8>]) -> Vec<u8> {
        let mut v = input.to_vec();
        match *m {
            Mutation::Flip { at, bit } if !v.is_empty() => {
                let i = at % v.len();
                v[i] ^= 1 << (bit % 8);
            }
            Mutation::Truncate { len } => v.truncate(len % (v.len() + 1)),
            Mutation::Overwrite { at, value } if v.len() >= 4 => {
                let i = at % (v.len() - 3);
                v[i..i + 4].copy_from_slice(&value.to_le_bytes());
            }
            Mutation::Splice { at, other, from } if !pool.is_empty() => {
                let o = &pool[other % pool.len()];
                let at = at % (v.len() + 1);
                let from = from % (o.len() + 1);
                v.truncate(at);
                v.extend_from_slice(&o[from..]);
            }
            _ => {}
        }
        v
    }

    /// What happens to one picked input: its mutations, then sent once or more, or held back
    /// and sent after the next one (reordered).
    #[derive(Debug, Clone)]
    pub struct Step {
        /// Which input of the pool (modulo its length).
        pub pick: usize,
        /// Applied in order.
        pub mutations: Vec<Mutation>,
        /// Sent this many times (duplicates).
        pub copies: u8,
        /// Held back and sent after the next step's input.
        pub late: bool,
        /// The record's control byte (sender and clock advance in the bodies above).
        pub ctl: u8,
    }

    /// The bodies' input framing: a control byte, a u16 length, the body (cut at 65 535 bytes).
    pub fn record(out: &mut Vec<u8>, ctl: u8, body: &[u8]) {
        let body = &body[..body.len().min(0xffff)];
        out.push(ctl);
        out.extend_from_slice(&(body.len() as u16).to_le_bytes());
        out.extend_from_slice(body);
    }

    /// The stream `steps` make of `pool`, framed for the bodies, after `prefix`.
    pub fn stream(prefix: &[u8], steps: &[Step], pool: &[Vec<u8>]) -> Vec<u8> {
        let mut out = prefix.to_vec();
        if pool.is_empty() {
            return out;
        }
        let mut held: Option<(u8, Vec<u8>, u8)> = None;
        for s in steps {
            let mut v = pool[s.pick % pool.len()].clone();
            for m in &s.mutations {
                v = apply(&v, m, pool);
            }
            let mine = (s.ctl, v, s.copies);
            // A late input waits until the next one is out (reordered).
            let now = if s.late { held.replace(mine) } else { Some(mine) };
            for (ctl, v, copies) in now.into_iter().chain(if s.late { None } else { held.take() }) {
                for _ in 0..copies.max(1) {
                    record(&mut out, ctl, &v);
                }
            }
        }
        if let Some((ctl, v, copies)) = held {
            for _ in 0..copies.max(1) {
                record(&mut out, ctl, &v);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_step_goes_out_after_the_next_one() {
        use mutate::{stream, Step};
        let pool = vec![vec![1u8], vec![2], vec![3]];
        let step = |pick, late, copies| Step { pick, mutations: Vec::new(), copies, late, ctl: 0 };
        let out = stream(&[], &[step(0, true, 1), step(1, false, 2), step(2, false, 1)], &pool);
        let bodies: Vec<&[u8]> = records(&out).map(|(_, b)| b).collect();
        assert_eq!(bodies, vec![&[2u8][..], &[2], &[1], &[3]]);
        let out = stream(&[], &[step(0, true, 1)], &pool);
        assert_eq!(records(&out).map(|(_, b)| b).collect::<Vec<_>>(), vec![&[1u8][..]]);
    }

    #[test]
    fn records_cover_the_input_and_end() {
        let v: Vec<(u8, &[u8])> = records(&[7, 2, 0, 0xaa, 0xbb, 9, 5, 0, 1]).collect();
        assert_eq!(v, vec![(7, &[0xaa, 0xbb][..]), (9, &[1][..])]);
        assert_eq!(records(&[]).count(), 0);
        assert_eq!(records(&[1]).collect::<Vec<_>>(), vec![(1, &[][..])]);
    }
}
