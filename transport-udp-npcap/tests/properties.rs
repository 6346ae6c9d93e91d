//! Property tests of the capture pipeline: any permutation / duplication of a datagram's IPv4
//! fragments reassembles to the original (or is rejected within the limits); no frame, however
//! cut or corrupted, panics.

use proptest::prelude::*;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use transport_udp_npcap::frame::{decode, FrameError, Ipv4Packet, LinkType};
use transport_udp_npcap::ip_reassembly::{IpReassembler, IpReassemblyConfig};

/// Ethernet + IPv4 frames for `payload` cut at `mtu` bytes of IP payload per fragment.
fn frames(payload: &[u8], mtu: usize, id: u16) -> Vec<Vec<u8>> {
    let step = mtu / 8 * 8;
    let mut out = Vec::new();
    let mut off = 0;
    loop {
        let end = (off + step).min(payload.len());
        let more = end < payload.len();
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + end - off) as u16;
        let flags = ((off / 8) as u16) | if more { 0x2000 } else { 0 };
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&flags.to_be_bytes());
        f.extend_from_slice(&[3, 17, 0, 0, 10, 0, 0, 1, 239, 0, 0, 1]);
        f.extend_from_slice(&payload[off..end]);
        out.push(f);
        if !more {
            break;
        }
        off = end;
    }
    out
}

fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

proptest! {
    #[test]
    fn permuted_duplicated_fragments_reassemble(
        len in 1usize..65_515,
        mtu in 8usize..9000,
        seed in any::<u64>(),
        dups in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let payload: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
        let mut fs = frames(&payload, mtu, 77);
        let extra: Vec<Vec<u8>> = dups.iter().map(|i| fs[i.index(fs.len())].clone()).collect();
        fs.extend(extra);
        shuffle(&mut fs, seed);
        let mut r = IpReassembler::new(IpReassemblyConfig::default());
        let now = Instant::now();
        let mut out = Vec::new();
        for f in &fs {
            let p = decode(LinkType::Ethernet, f).unwrap();
            if let Some(d) = r.push(now, &p) {
                out.push(d.into_owned());
            }
        }
        // Never spliced or corrupted: every output is the original. Duplicates arriving after
        // completion may complete it again (the eCAL layer above drops duplicate messages) or
        // leave a partial that expires.
        prop_assert!(!out.is_empty());
        prop_assert!(out.iter().all(|d| *d == payload));
        prop_assert!(out.len() <= 1 + dups.len());
        r.expire(now + Duration::from_secs(5));
        prop_assert_eq!(r.partial_datagrams(), 0);
        prop_assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn corrupted_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), dlt in prop::sample::select(vec![0i32, 1, 12, 108, 113, 276])) {
        let link = LinkType::from_dlt(dlt).unwrap();
        let mut r = IpReassembler::new(IpReassemblyConfig { max_datagrams: 4, max_buffered_bytes: 1 << 18, ..Default::default() });
        if let Ok(p) = decode(link, &bytes) {
            let _ = r.push(Instant::now(), &p);
            prop_assert!(r.partial_datagrams() <= 4);
        }
    }

    #[test]
    fn arbitrary_fragments_stay_within_bounds(
        ops in proptest::collection::vec((0u16..4, 0usize..8192, any::<bool>(), 1usize..1500), 1..400)
    ) {
        let cfg = IpReassemblyConfig { max_datagrams: 3, max_buffered_bytes: 200_000, timeout: Duration::from_secs(5) };
        let mut r = IpReassembler::new(cfg);
        let t0 = Instant::now();
        let data = vec![0x5a; 1500];
        for (i, (id, off8, more, len)) in ops.into_iter().enumerate() {
            let p = Ipv4Packet {
                src: Ipv4Addr::new(10, 0, 0, 1),
                dst: Ipv4Addr::new(239, 0, 0, 1),
                protocol: 17,
                identification: id,
                offset: off8 * 8,
                more_fragments: more,
                payload: &data[..len],
            };
            let _ = r.push(t0 + Duration::from_millis(i as u64), &p);
            prop_assert!(r.partial_datagrams() <= 3);
            prop_assert!(r.buffered_bytes() <= 200_000);
        }
    }
}

/// `ip` behind the link header of `link` (a VLAN tag or two for Ethernet when `vlans` > 0).
fn wrap(link: LinkType, ip: &[u8], vlans: usize) -> Vec<u8> {
    let mut f = match link {
        LinkType::Ethernet => {
            let mut f = vec![0x01, 0x00, 0x5e, 0, 0, 1, 2, 0, 0, 0, 0, 1];
            for _ in 0..vlans {
                f.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
            }
            f.extend_from_slice(&[0x08, 0x00]);
            f
        }
        LinkType::LinuxSll => {
            let mut f = vec![0u8; 14];
            f.extend_from_slice(&[0x08, 0x00]);
            f
        }
        LinkType::LinuxSll2 => {
            let mut f = vec![0x08, 0x00];
            f.extend_from_slice(&[0u8; 18]);
            f
        }
        LinkType::Null => 2u32.to_le_bytes().to_vec(),
        LinkType::Loop => 2u32.to_be_bytes().to_vec(),
        LinkType::Raw => Vec::new(),
    };
    f.extend_from_slice(ip);
    f
}

proptest! {
    /// Every link type gives back the IPv4 fields and payload it wraps; every strict prefix of
    /// the frame (cut in the link header, the IPv4 header or the payload) is `Truncated`.
    #[test]
    fn frames_of_every_link_type_decode_and_every_truncation_is_an_error(
        link in prop::sample::select(vec![
            LinkType::Ethernet, LinkType::LinuxSll, LinkType::LinuxSll2, LinkType::Null, LinkType::Loop, LinkType::Raw,
        ]),
        vlans in 0usize..3,
        payload in proptest::collection::vec(any::<u8>(), 0..200),
        id in any::<u16>(),
        off8 in 0u16..0x1fff,
        more in any::<bool>(),
        options in 0usize..3,
    ) {
        let ihl = 5 + options;
        let mut ip = vec![(0x40 | ihl) as u8, 0];
        ip.extend_from_slice(&((ihl * 4 + payload.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&id.to_be_bytes());
        ip.extend_from_slice(&(off8 | if more { 0x2000 } else { 0 }).to_be_bytes());
        ip.extend_from_slice(&[3, 17, 0, 0, 10, 77, 0, 1, 239, 0, 0, 1]);
        ip.extend(std::iter::repeat_n(1u8, options * 4)); // NOP options
        ip.extend_from_slice(&payload);
        let frame = wrap(link, &ip, vlans);
        let p = decode(link, &frame).unwrap();
        prop_assert_eq!(p, Ipv4Packet {
            src: Ipv4Addr::new(10, 77, 0, 1),
            dst: Ipv4Addr::new(239, 0, 0, 1),
            protocol: 17,
            identification: id,
            offset: usize::from(off8) * 8,
            more_fragments: more,
            payload: &payload,
        });
        for cut in 0..frame.len() {
            prop_assert_eq!(decode(link, &frame[..cut]), Err(FrameError::Truncated), "cut at {}", cut);
        }
    }
}
