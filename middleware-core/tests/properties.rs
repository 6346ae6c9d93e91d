//! Property tests: round trips, truncations, permutations and duplications, bounds under
//! arbitrary input. No input may panic.

use middleware_core::fragment::{split, Outcome, Reassembler, ReassemblyConfig};
use middleware_core::pb::Sample;
use middleware_core::pubsub::{SeqFilter, Verdict, HELD};
use middleware_core::wire::{Datagram, DatagramRepr, SampleFrame, SampleFrameRepr, HEADER_LEN};
use proptest::prelude::*;
use prost::Message;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn repr() -> impl Strategy<Value = DatagramRepr> {
    prop_oneof![
        (any::<i32>(), any::<u32>(), any::<u32>()).prop_map(|(id, count, total_len)| DatagramRepr::FragmentInfo {
            id,
            count,
            total_len
        }),
        (any::<i32>(), any::<u32>(), any::<u32>()).prop_map(|(id, index, len)| DatagramRepr::Fragment {
            id,
            index,
            len
        }),
        any::<u32>().prop_map(|len| DatagramRepr::Whole { len }),
    ]
}

fn from() -> SocketAddr {
    "10.1.2.3:4000".parse().unwrap()
}

/// A splitter for the tests: a range from a third of the first fragment on, as long as 300
/// times its first byte (may reach past the message: then the reassembler joins it whole).
fn test_splitter(first: &[u8]) -> Option<std::ops::Range<usize>> {
    let a = first.len() / 3;
    Some(a..a + usize::from(*first.first()?) * 300)
}

/// A message of `len` bytes, its datagrams of at most `max` bytes (message id 17) followed by a
/// copy of every `dup_every`-th one, and whether it took more than one datagram.
fn message_and_datagrams(len: usize, max: usize, dup_every: usize) -> (Vec<u8>, Vec<Vec<u8>>, bool) {
    let msg: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    let mut dgs: Vec<Vec<u8>> = split(&msg, max, 17).unwrap().map(|p| [&p.header[..], p.body].concat()).collect();
    let fragmented = dgs.len() > 1;
    let extra: Vec<Vec<u8>> = dgs.iter().step_by(dup_every).cloned().collect();
    dgs.extend(extra);
    (msg, dgs, fragmented)
}

proptest! {
    #[test]
    fn header_emit_then_parse_is_identity(r in repr()) {
        let bytes = r.to_bytes();
        // Body lengths are checked by new_checked; give the view enough bytes for any declared len
        // only when it is small, otherwise check the header alone through new_unchecked.
        let d = Datagram::new_unchecked(&bytes[..]);
        prop_assert_eq!(DatagramRepr::parse(&d).unwrap(), r);
    }

    #[test]
    fn every_truncation_of_a_datagram_is_an_error(body in proptest::collection::vec(any::<u8>(), 1..300)) {
        let mut d = DatagramRepr::Whole { len: body.len() as u32 }.to_bytes().to_vec();
        d.extend_from_slice(&body);
        prop_assert!(Datagram::new_checked(&d[..]).is_ok());
        for cut in 0..d.len() {
            prop_assert!(Datagram::new_checked(&d[..cut]).is_err());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(d) = Datagram::new_checked(&bytes[..]) {
            let _ = DatagramRepr::parse(&d);
            let _ = d.body();
            let _ = d.to_string();
        }
        if let Ok(f) = SampleFrame::new_checked(&bytes) {
            prop_assert!(f.name().len() + 3 <= bytes.len());
        }
        let _ = Sample::decode(&bytes[..]);
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let _ = r.on_datagram(Instant::now(), from(), &bytes);
    }

    #[test]
    fn sample_frame_round_trip(name in "[a-z/_0-9]{0,40}", body in proptest::collection::vec(any::<u8>(), 0..100)) {
        let mut v = Vec::new();
        SampleFrameRepr { name: &name }.emit_prefix(&mut v);
        v.extend_from_slice(&body);
        let f = SampleFrame::new_checked(&v).unwrap();
        prop_assert_eq!(f.name(), name.as_str());
        prop_assert_eq!(f.body(), &body[..]);
        for cut in 0..(name.len() + 3) {
            prop_assert!(SampleFrame::new_checked(&v[..cut]).is_err());
        }
    }

    /// Any permutation with duplicates of a message's datagrams reassembles to exactly the
    /// original, once, and leaves nothing buffered.
    #[test]
    fn permuted_and_duplicated_fragments_reassemble(
        len in 0usize..120_000,
        max in (HEADER_LEN + 1)..9000usize,
        seed in any::<u64>(),
        dup_every in 1usize..6,
        with_splitter in any::<bool>(),
    ) {
        let (msg, mut dgs, fragmented) = message_and_datagrams(len, max, dup_every);
        let mut x = seed | 1;
        for i in (1..dgs.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            dgs.swap(i, (x % (i as u64 + 1)) as usize);
        }
        // With a splitter, a message whose first fragment comes first is joined in three parts
        // around the range it names; joined again they are the message.
        let mut r = if with_splitter {
            Reassembler::with_splitter(ReassemblyConfig::default(), test_splitter)
        } else {
            Reassembler::new(ReassemblyConfig::default())
        };
        let now = Instant::now();
        let mut out = Vec::new();
        for d in &dgs {
            match r.on_datagram(now, from(), d) {
                Outcome::Message(m) => out.push(m.into_owned()),
                Outcome::Split(m) => {
                    prop_assert!(with_splitter);
                    // The range the splitter named in the first fragment's body.
                    let first = &msg[..(max - HEADER_LEN).min(msg.len())];
                    prop_assert_eq!(Some(m.head.len()..m.head.len() + m.payload.len()), test_splitter(first));
                    prop_assert!(m.payload.capacity() == m.payload.len(), "the split range's buffer is exact");
                    out.push(m.joined());
                }
                _ => {}
            }
        }
        // A message that fits one datagram is delivered once per copy of that datagram: eCAL
        // (and the subscriber's clock filter above) deduplicates those; fragments are deduplicated here.
        prop_assert!(!out.is_empty());
        prop_assert!(out.iter().all(|m| *m == msg));
        if fragmented {
            // Late duplicates of a completed message are recognised and dropped.
            prop_assert_eq!(out.len(), 1);
            prop_assert_eq!(r.partial_messages(), 0);
            r.expire(now + Duration::from_secs(5));
            prop_assert_eq!(r.buffered_bytes(), 0);
            prop_assert_eq!(r.partial_messages(), 0);
        }
    }

    /// Datagrams written through leases (in pieces, as IPv4 fragments arrive), some handed back
    /// part-way and finished the buffered way, some held while later datagrams arrive, in any
    /// order with duplicates: the same message, once, as when every datagram is buffered, and
    /// nothing left behind.
    #[test]
    fn leased_datagrams_reassemble_as_buffered_ones(
        len in 0usize..100_000,
        max in (HEADER_LEN + 1)..9000usize,
        seed in any::<u64>(),
        dup_every in 2usize..8,
        with_splitter in any::<bool>(),
    ) {
        let (msg, mut dgs, fragmented) = message_and_datagrams(len, max, dup_every);
        let mut x = seed | 1;
        let mut rnd = move |n: usize| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; (x % n.max(1) as u64) as usize };
        // Mostly in order (as on the wire), with a few swaps.
        for _ in 0..rnd(4) {
            let (i, j) = (rnd(dgs.len()), rnd(dgs.len()));
            dgs.swap(i, j);
        }
        let mut r = if with_splitter {
            Reassembler::with_splitter(ReassemblyConfig::default(), test_splitter)
        } else {
            Reassembler::new(ReassemblyConfig::default())
        };
        let now = Instant::now();
        let mut out = Vec::new();
        let take = |o: Outcome<'_>, out: &mut Vec<Vec<u8>>| match o {
            Outcome::Message(m) => out.push(m.into_owned()),
            Outcome::Split(m) => out.push(m.joined()),
            _ => {}
        };
        let mut held = None;
        let mut taken = 0;
        for d in &dgs {
            // The first piece: at least the header, as the first IPv4 fragment holds it.
            let first = (HEADER_LEN + rnd(1500)).min(d.len());
            match rnd(4) {
                0 => take(r.on_datagram(now, from(), d), &mut out),
                mode => match r.begin_lease(now, from(), &d[..first], d.len()) {
                    None => take(r.on_datagram(now, from(), d), &mut out),
                    Some(mut lease) => {
                        taken += 1;
                        let mut at = first;
                        let cut = if mode == 2 { first + rnd(d.len() - first) } else { d.len() };
                        while at < cut {
                            let n = (1 + rnd(1480)).min(cut - at);
                            prop_assert_eq!(lease.push(&d[at..at + n]), n);
                            at += n;
                        }
                        match mode {
                            1 => take(r.finish_lease(now, lease), &mut out),
                            2 => {
                                let mut so_far = Vec::new();
                                prop_assert!(r.abort_lease(lease, Some(&mut so_far)));
                                prop_assert_eq!(&so_far[..], &d[..cut]);
                                so_far.extend_from_slice(&d[cut..]);
                                take(r.on_datagram(now, from(), &so_far), &mut out);
                            }
                            _ => {
                                // Held while the next datagram arrives, then finished.
                                if let Some(l) = held.take() {
                                    take(r.finish_lease(now, l), &mut out);
                                }
                                held = Some(lease);
                            }
                        }
                    }
                },
            }
        }
        if let Some(l) = held.take() {
            take(r.finish_lease(now, l), &mut out);
        }
        prop_assert!(!out.is_empty());
        prop_assert!(out.iter().all(|m| *m == msg));
        prop_assert_eq!(r.stats().leased, taken, "every lease taken is counted");
        if fragmented {
            prop_assert_eq!(out.len(), 1);
            prop_assert_eq!((r.partial_messages(), r.buffered_bytes()), (0, 0));
        }
    }

    /// Arbitrary datagrams (valid headers with random fields) never exceed the configured bounds,
    /// with or without a splitter.
    #[test]
    fn bounds_hold_under_arbitrary_fragments(
        ops in proptest::collection::vec((repr(), 0usize..3000, any::<u16>()), 1..300)
    ) {
        let cfg = ReassemblyConfig { max_partial_messages: 8, max_buffered_bytes: 100_000, max_message_len: 1 << 20, ..Default::default() };
        let mut r = if ops.len() % 2 == 0 { Reassembler::new(cfg.clone()) } else { Reassembler::with_splitter(cfg.clone(), test_splitter) };
        let t0 = Instant::now();
        for (i, (rep, body_len, port)) in ops.into_iter().enumerate() {
            let mut d = rep.to_bytes().to_vec();
            if let DatagramRepr::Fragment { id, index, .. } = rep {
                d = DatagramRepr::Fragment { id: id % 4, index: index % 16, len: body_len as u32 }.to_bytes().to_vec();
                d.resize(HEADER_LEN + body_len, 0xab);
            }
            let from = SocketAddr::from(([10, 0, 0, 1], port % 3));
            let now = t0 + Duration::from_millis(i as u64);
            // Some through leases: finished, handed back, or dropped unfinished.
            let first = (HEADER_LEN + usize::from(port >> 8)).min(d.len());
            match (port >> 4) % 4 {
                0 => { let _ = r.on_datagram(now, from, &d); }
                how => if let Some(mut l) = r.begin_lease(now, from, &d[..first], d.len()) {
                    l.push(&d[first..]);
                    match how {
                        1 => { let _ = r.finish_lease(now, l); }
                        2 => { let _ = r.abort_lease(l, None); }
                        _ => drop(l),
                    }
                },
            }
            prop_assert!(r.partial_messages() <= 8);
            prop_assert!(r.buffered_bytes() <= 100_000);
        }
    }

    /// Buffers of equal-sized datagrams back to back (what a capture sees of an offload send),
    /// taken as the data channel takes them (`append_run` for each run of in-order fragments,
    /// `on_datagram` for the rest), give exactly what the datagrams one by one give at the same
    /// instants: the same messages in the same order, the same counters, the same state left.
    /// Two messages in lockstep (each fragment of the second right where the first's next one
    /// is expected, so a run must stop at a change of id), duplicates, swaps, losses, an
    /// announced total smaller than the fragments carry (a run must stop at the fragment past
    /// it), time passing (expiry), and a byte limit that evicts.
    #[test]
    fn runs_appended_at_once_match_datagrams_one_by_one(
        len in 0usize..60_000,
        max in prop_oneof![(HEADER_LEN + 1)..200usize, 200..4000usize],
        other_len in 0usize..60_000,
        edits in proptest::collection::vec((0usize..1000, 0u8..5), 0..12),
        per_buffer in 2usize..=128,
        step_ms in 0u64..30,
        with_splitter in any::<bool>(),
        tight in any::<bool>(),
    ) {
        let datagrams = |len: usize, id: i32| -> Vec<Vec<u8>> {
            let msg: Vec<u8> = (0..len).map(|i| (i * 7 + id as usize) as u8).collect();
            split(&msg, max, id).unwrap().map(|p| [&p.header[..], p.body].concat()).collect()
        };
        let (a, b) = (datagrams(len, 17), datagrams(other_len, 18));
        // b's fragment k + 1 right after a's fragment k (position 0 is the info datagram).
        let mut dgs: Vec<Vec<u8>> = b.first().cloned().into_iter().collect();
        for p in 0..a.len().max(b.len()) {
            dgs.extend(a.get(p).cloned());
            dgs.extend(b.get(p + 1).cloned());
        }
        for (at, what) in edits {
            let i = at % dgs.len();
            match what {
                0 => { let d = dgs[i].clone(); dgs.insert(i, d); }
                1 if i + 1 < dgs.len() => dgs.swap(i, i + 1),
                2 => { dgs.remove(i); if dgs.is_empty() { break; } }
                3 => { let d = dgs[i].clone(); dgs.push(d); }
                // A lying announcement: the total made smaller than the fragments carry (still
                // at least a byte per fragment), so that a run meets a fragment past it.
                _ => {
                    let is_info = |d: &Vec<u8>| d.len() >= HEADER_LEN && d[8..12] == 1u32.to_le_bytes();
                    let Some(j) = (0..dgs.len()).map(|k| (i + k) % dgs.len()).find(|&j| is_info(&dgs[j])) else { continue };
                    let d = &mut dgs[j];
                    let field = |d: &[u8], at: usize| u32::from_le_bytes(d[at..at + 4].try_into().unwrap());
                    let (count, total) = (field(d, 16), field(d, 20));
                    let smaller = total.saturating_sub(at as u32 + 1).max(count);
                    d[20..24].copy_from_slice(&smaller.to_le_bytes());
                }
            }
        }
        let config = ReassemblyConfig {
            timeout: Duration::from_millis(100),
            max_buffered_bytes: if tight { 30_000 } else { ReassemblyConfig::default().max_buffered_bytes },
            ..ReassemblyConfig::default()
        };
        let new = || if with_splitter { Reassembler::with_splitter(config.clone(), test_splitter) } else { Reassembler::new(config.clone()) };
        let owned = |o: Outcome<'_>| match o {
            Outcome::Message(m) => Some(m.into_owned()),
            Outcome::Split(m) => Some(m.joined()),
            _ => None,
        };
        // Buffers: a datagram and the next ones of its size, then at most one shorter; at
        // most `per_buffer` datagrams each, so that a message spans buffers (and time).
        let mut buffers = Vec::new();
        let mut i = 0;
        while i < dgs.len() {
            let size = dgs[i].len();
            let mut j = i + 1;
            while j < dgs.len() && j - i < per_buffer && dgs[j].len() == size { j += 1; }
            if j < dgs.len() && j - i < per_buffer && dgs[j].len() < size { j += 1; }
            buffers.push((size, i..j));
            i = j;
        }
        let t0 = Instant::now();
        let (mut one, mut runs) = (new(), new());
        let (mut by_one, mut by_runs) = (Vec::new(), Vec::new());
        for (k, (size, range)) in buffers.into_iter().enumerate() {
            let now = t0 + Duration::from_millis(step_ms * k as u64);
            // The same state after every buffer, not only at the end.
            prop_assert_eq!(runs.stats(), one.stats());
            prop_assert_eq!((runs.partial_messages(), runs.buffered_bytes()), (one.partial_messages(), one.buffered_bytes()));
            by_one.extend(dgs[range.clone()].iter().filter_map(|d| owned(one.on_datagram(now, from(), d))));
            let buffer = dgs[range].concat();
            let mut rest = &buffer[..];
            loop {
                rest = &rest[runs.append_run(now, from(), rest, size)..];
                if rest.is_empty() { break; }
                let (piece, after) = rest.split_at(size.min(rest.len()));
                rest = after;
                by_runs.extend(owned(runs.on_datagram(now, from(), piece)));
                if rest.is_empty() { break; }
            }
        }
        prop_assert_eq!(&by_runs, &by_one);
        prop_assert_eq!(runs.stats(), one.stats());
        prop_assert_eq!((runs.partial_messages(), runs.buffered_bytes()), (one.partial_messages(), one.buffered_bytes()));
        // What is left expires at the same instants.
        for later in [150, 1000] {
            let t = t0 + Duration::from_millis(step_ms * dgs.len() as u64 + later);
            runs.expire(t);
            one.expire(t);
            prop_assert_eq!(runs.stats(), one.stats());
            prop_assert_eq!(runs.partial_messages(), one.partial_messages());
        }
    }

    /// What a segmentation offload send takes: every datagram once, in order, in runs of at
    /// most 64 whose datagrams all have the first one's size except a shorter last, at most
    /// 65 507 bytes each; and a message split into frames, its runs concatenated and cut back
    /// with `coalesced_segment_len`, gives the same datagrams (what a receiver of the uncut buffer
    /// does).
    #[test]
    fn offload_runs_cover_every_datagram_and_split_back(
        len in 0usize..300_000,
        frame in 25usize..9000,
        extra in proptest::collection::vec(0usize..2000, 0..40),
    ) {
        use middleware_core::transport::{offload_runs, Piece, MAX_SEGMENTS};
        let message: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let bodies: Vec<Vec<u8>> = extra.iter().map(|&n| vec![7u8; n]).collect();
        let mut pieces: Vec<Piece<'_>> = split(&message, frame, 3).unwrap().collect();
        pieces.extend(bodies.iter().map(|b| Piece { header: DatagramRepr::Whole { len: b.len() as u32 }.to_bytes(), body: b }));
        let size = |p: &Piece<'_>| p.header.len() + p.body.len();
        let mut next = 0;
        for (run, seg) in offload_runs(&pieces) {
            prop_assert_eq!(run.start, next);
            prop_assert!(!run.is_empty() && run.len() <= MAX_SEGMENTS);
            let sizes: Vec<usize> = pieces[run.clone()].iter().map(size).collect();
            prop_assert_eq!(sizes[0], seg);
            prop_assert!(sizes[..sizes.len() - 1].iter().all(|&s| s == seg));
            prop_assert!(*sizes.last().unwrap() <= seg);
            prop_assert!(run.len() == 1 || sizes.iter().sum::<usize>() <= 65_507);
            // The uncut buffer is taken for one and cut back into the run's datagrams; a run of
            // one datagram is never cut.
            let joined: Vec<u8> = pieces[run.clone()].iter().flat_map(|p| p.header.iter().chain(p.body)).copied().collect();
            if run.len() == 1 {
                prop_assert_eq!(middleware_core::wire::coalesced_segment_len(&joined), None);
            } else {
                prop_assert_eq!(middleware_core::wire::coalesced_segment_len(&joined), Some(seg));
                let want: Vec<Vec<u8>> = pieces[run.clone()].iter().map(|p| [&p.header[..], p.body].concat()).collect();
                let cut: Vec<Vec<u8>> = joined.chunks(seg).map(<[u8]>::to_vec).collect();
                prop_assert_eq!(cut, want);
            }
            next = run.end;
        }
        prop_assert_eq!(next, pieces.len());
    }

    /// The order filter delivers each clock at most once, whatever arrives (a clock delivered
    /// as a held jump and pushed out of the held set by HELD newer ones excepted), and with
    /// `drop_out_of_order` its accepted clocks rise (from each resynchronisation on).
    #[test]
    fn filter_delivers_each_clock_at_most_once(clocks in proptest::collection::vec(0i64..3000, 1..500), ooo in any::<bool>()) {
        let mut f = SeqFilter::default();
        let mut seen = HashSet::new();
        let mut held: Vec<i64> = Vec::new();
        let mut max = i64::MIN;
        for c in clocks {
            let v = f.check(c, ooo);
            if v.delivers() && !seen.insert(c) {
                let pushed_out = held.iter().rposition(|&h| h == c).is_some_and(|i| held.len() - i > HELD);
                prop_assert!(pushed_out, "clock {} delivered twice", c);
            }
            if v == Verdict::Held {
                held.push(c);
            }
            if v == Verdict::Resync {
                // The filter followed a stream it had shut out (possibly below): order restarts.
                max = c;
            }
            if let Verdict::Accept { .. } = v {
                if ooo { prop_assert!(c > max || max == i64::MIN); }
                max = max.max(c);
            }
        }
    }
}

/// Data samples and publisher registrations with arbitrary field values.
fn pb_sample() -> impl Strategy<Value = Sample> {
    use middleware_core::pb::{Content, DataTypeInformation, LayerType, Topic, TransportLayer};
    let topic = (
        any::<i32>(),
        "[a-z0-9.-]{0,20}",
        any::<i32>(),
        "[0-9]{0,20}",
        "[a-z/_]{0,30}",
        proptest::collection::vec(any::<u8>(), 0..40),
        proptest::collection::vec((0i32..6, any::<i32>(), any::<bool>()), 0..3),
        any::<i64>(),
    )
        .prop_map(|(clock, host, pid, id, name, descriptor, layers, data_clock)| Topic {
            registration_clock: clock,
            host_name: host,
            process_id: pid,
            topic_id: id,
            topic_name: name,
            datatype_information: Some(DataTypeInformation {
                name: "pb.X".into(),
                encoding: "proto".into(),
                descriptor_information: descriptor,
            }),
            transport_layer: layers
                .into_iter()
                .map(|(t, version, enabled)| TransportLayer {
                    r#type: if t == 0 { LayerType::UdpMc as i32 } else { t },
                    version,
                    enabled,
                    ..Default::default()
                })
                .collect(),
            data_clock,
            ..Default::default()
        });
    let content =
        (any::<i64>(), any::<i64>(), any::<i64>(), proptest::collection::vec(any::<u8>(), 0..300), any::<i32>())
            .prop_map(|(id, clock, time, payload, size)| Content {
                id,
                clock,
                time,
                payload: payload.into(),
                size,
                hash: id ^ (clock << 1),
            });
    (0i32..20, proptest::option::of(topic), proptest::option::of(content), proptest::collection::vec(any::<u8>(), 0..8))
        .prop_map(|(cmd_type, topic, content, padding)| Sample {
            cmd_type,
            topic,
            content,
            padding,
            ..Default::default()
        })
}

proptest! {
    /// A sample re-decodes to itself; a truncated encoding either fails to decode or is cut
    /// exactly at a field boundary, in which case it decodes to the fields before the cut
    /// (re-encoding gives the truncated bytes back): a cut never yields invented values.
    #[test]
    fn pb_sample_round_trip_and_truncations(s in pb_sample()) {
        let bytes = s.encode_to_vec();
        prop_assert_eq!(&Sample::decode(bytes.as_slice()).unwrap(), &s);
        for cut in 0..bytes.len() {
            if let Ok(v) = Sample::decode(&bytes[..cut]) {
                prop_assert_eq!(v.encode_to_vec(), &bytes[..cut], "cut at {}", cut);
            }
        }
    }
}
