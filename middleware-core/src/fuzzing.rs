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

/// Registration samples (protobuf) into the remote table, as this host in network and local
/// mode: never a panic, the table bounded. Each record is applied to two tables: one decodes and
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
    let mut plain = RemoteTable::default();
    let mut fast = RemoteTable::default();
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
        }
    }
    for table in [&mut plain, &mut fast] {
        assert!(table.entities().count() <= MAX_REMOTE_ENTITIES && table.processes().count() <= MAX_REMOTE_PROCESSES);
        table.expire(t0 + Duration::from_secs(3600), Duration::from_secs(10));
        assert_eq!((table.entities().count(), table.processes().count()), (0, 0), "everything expires");
        assert_eq!(table.fingerprint_entries(), (0, 0), "fingerprints expire with their entries");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_cover_the_input_and_end() {
        let v: Vec<(u8, &[u8])> = records(&[7, 2, 0, 0xaa, 0xbb, 9, 5, 0, 1]).collect();
        assert_eq!(v, vec![(7, &[0xaa, 0xbb][..]), (9, &[1][..])]);
        assert_eq!(records(&[]).count(), 0);
        assert_eq!(records(&[1]).collect::<Vec<_>>(), vec![(1, &[][..])]);
    }
}
