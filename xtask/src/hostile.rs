//! The hostile sender of `cargo xtask torture` (`cargo xtask torture-send CASE SECONDS`, run
//! inside the sending namespace): UDP datagrams and hand-built IPv4 packets (raw socket) to the
//! data group 239.0.0.1:14002 (and the registration port), at a fixed rate, for one case.
//! Prints one JSON line: the case and the number of datagrams / IP packets sent. The extra case
//! `bad_registration` (10/s) serves the `mwctl` tool tests.

use anyhow::{bail, Context};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

pub const GROUP: Ipv4Addr = Ipv4Addr::new(239, 0, 0, 1);
pub const DATA_PORT: u16 = 14002;
pub const REG_PORT: u16 = 14000;
/// The publisher's host in the lab: IP packets claiming it collide with its IP identifications.
pub const VICTIM: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// An on-link address no host has: IP-level cases that must not touch the publisher's flow.
pub const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 9);

/// Every hostile case: (name, what it sends, packets per second).
pub const CASES: &[(&str, &str, u64)] = &[
    ("random_bytes", "random datagrams of 0..1472 bytes to the data and registration ports", 10_000),
    ("bad_header", "eCAL headers with wrong magic, version or type", 10_000),
    ("wrong_name_length", "whole messages whose sample-name length is 0xFFFF, 0, or past the end", 10_000),
    ("declared_4gib", "fragment info declaring a 4 GiB message, then a fragment", 10_000),
    ("fragments_2pow31", "fragment info declaring 2^31 fragments, then a fragment", 10_000),
    ("fragment_flood", "never-completed 64 KiB messages (info + first fragment) from 4 senders", 40_000),
    ("ip_overlap_dup", "IP fragments duplicated and overlapping with other bytes (another source)", 10_000),
    ("teardrop", "teardrop: a last fragment lying inside the first (another source)", 10_000),
    (
        "ip_id_reuse",
        "fragments claiming the publisher's address for every IP id (poison), and ids reused by another source",
        40_000,
    ),
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// eCAL datagram header (SPEC §3): magic, version 5, 3 reserved, kind, id, num, len (LE).
fn ecal_header(magic: &[u8; 4], version: u8, kind: u32, id: i32, num: u32, len: u32) -> Vec<u8> {
    let mut h = magic.to_vec();
    h.extend_from_slice(&[version, 0, 0, 0]);
    h.extend_from_slice(&kind.to_le_bytes());
    h.extend_from_slice(&id.to_le_bytes());
    h.extend_from_slice(&num.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h
}

/// One IPv4 packet (UDP protocol) with the given fragment fields; the kernel fills the header
/// checksum (IP_HDRINCL).
fn ipv4(src: Ipv4Addr, id: u16, offset: usize, more: bool, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let frag = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&frag.to_be_bytes());
    p.extend_from_slice(&[1, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&GROUP.octets());
    p.extend_from_slice(payload);
    p
}

/// A UDP header + payload to the data port (checksum 0: none).
fn udp(payload: &[u8]) -> Vec<u8> {
    let mut u = 40_000u16.to_be_bytes().to_vec();
    u.extend_from_slice(&DATA_PORT.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

enum Packet {
    Udp(usize, u16, Vec<u8>),
    Ip(Vec<u8>),
}

/// The packets of round `i` of a case.
fn round(case: &str, i: u64, rng: &mut Rng) -> anyhow::Result<Vec<Packet>> {
    let id = i as i32;
    // `%`, not `is_multiple_of`: the Windows build check's Debian Rust 1.85 lacks it.
    let port = |i: u64| if i % 2 == 0 { DATA_PORT } else { REG_PORT };
    Ok(match case {
        "random_bytes" => {
            let n = (rng.next() % 1473) as usize;
            vec![Packet::Udp(0, port(i), rng.bytes(n))]
        }
        // Not a torture case (`mwctl monitor` and `doctor` must count these as registration
        // losses): a whole message on the registration port with a valid `reg_sample` frame
        // whose protobuf does not decode (field 1, a varint, sent length-delimited).
        "bad_registration" => {
            let mut body = 11u16.to_le_bytes().to_vec();
            body.extend_from_slice(b"reg_sample\0");
            body.extend_from_slice(&[0x0A, 0xFF, 0xFF, 0xFF, 0x0F]);
            let h = ecal_header(b"ECAL", 5, 3, id, 0, body.len() as u32);
            vec![Packet::Udp(0, REG_PORT, [h, body].concat())]
        }
        "bad_header" => {
            let body = rng.bytes(100);
            let h = match i % 3 {
                0 => ecal_header(b"ECAX", 5, 3, id, 0, 100),
                1 => ecal_header(b"ECAL", 6, 3, id, 0, 100),
                _ => ecal_header(b"ECAL", 5, 9, id, 0, 100),
            };
            vec![Packet::Udp(0, DATA_PORT, [h, body].concat())]
        }
        "wrong_name_length" => {
            let mut body = Vec::new();
            let n: u16 = match i % 4 {
                0 => 0xFFFF,
                1 => 0,
                2 => 3,
                _ => 200,
            };
            body.extend_from_slice(&n.to_le_bytes());
            body.extend_from_slice(b"torture\0");
            body.extend(rng.bytes(40));
            let h = ecal_header(b"ECAL", 5, 3, id, 0, body.len() as u32);
            vec![Packet::Udp(0, DATA_PORT, [h, body].concat())]
        }
        "declared_4gib" => vec![
            Packet::Udp(0, DATA_PORT, ecal_header(b"ECAL", 5, 1, id, 2, u32::MAX)),
            Packet::Udp(0, DATA_PORT, [ecal_header(b"ECAL", 5, 2, id, 0, 1400), rng.bytes(1400)].concat()),
        ],
        "fragments_2pow31" => vec![
            Packet::Udp(0, DATA_PORT, ecal_header(b"ECAL", 5, 1, id, 1 << 31, 1 << 20)),
            Packet::Udp(0, DATA_PORT, [ecal_header(b"ECAL", 5, 2, id, 5, 1400), rng.bytes(1400)].concat()),
        ],
        "fragment_flood" => {
            let s = (i % 4) as usize;
            vec![
                Packet::Udp(s, DATA_PORT, ecal_header(b"ECAL", 5, 1, id, 48, 48 * 1400)),
                Packet::Udp(s, DATA_PORT, [ecal_header(b"ECAL", 5, 2, id, 0, 1400), rng.bytes(1400)].concat()),
            ]
        }
        "ip_overlap_dup" => {
            let dgram = udp(&rng.bytes(2952));
            let ip_id = (i % 60_000) as u16 + 1;
            let (a, b) = (&dgram[..1480], &dgram[1480..]);
            vec![
                Packet::Ip(ipv4(STRANGER, ip_id, 0, true, a)),
                Packet::Ip(ipv4(STRANGER, ip_id, 0, true, a)),
                Packet::Ip(ipv4(STRANGER, ip_id, 8, true, &rng.bytes(1480))),
                Packet::Ip(ipv4(STRANGER, ip_id, 1480, false, b)),
                Packet::Ip(ipv4(STRANGER, ip_id, 1480, false, b)),
            ]
        }
        "teardrop" => {
            let ip_id = (i % 60_000) as u16 + 1;
            vec![
                Packet::Ip(ipv4(STRANGER, ip_id, 0, true, &udp(&rng.bytes(40)))),
                Packet::Ip(ipv4(STRANGER, ip_id, 24, false, &rng.bytes(4))),
            ]
        }
        "ip_id_reuse" => {
            // Poison: the publisher's (source, group, UDP) key for every identification, a
            // fragment where its second fragment goes. Every 16th round: another source
            // leaves half a datagram, then reuses the identification for a complete one.
            let mut v = vec![Packet::Ip(ipv4(VICTIM, (i % 65_536) as u16, 1480, true, &rng.bytes(8)))];
            if i % 16 == 0 {
                let ip_id = (i / 16 % 60_000) as u16 + 1;
                let old = udp(&rng.bytes(2952));
                let new = udp(&rng.bytes(2000));
                v.push(Packet::Ip(ipv4(STRANGER, ip_id, 0, true, &old[..1480])));
                v.push(Packet::Ip(ipv4(STRANGER, ip_id, 0, true, &new[..1480])));
                v.push(Packet::Ip(ipv4(STRANGER, ip_id, 1480, false, &new[1480..])));
            }
            v
        }
        other => bail!("unknown hostile case {other}"),
    })
}

/// `torture-send CASE SECONDS`.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let [case, seconds] = args else { bail!("usage: torture-send CASE SECONDS") };
    let rate = match case.as_str() {
        "bad_registration" => &10,
        _ => &CASES.iter().find(|c| c.0 == case).with_context(|| format!("unknown case {case}"))?.2,
    };
    let seconds: f64 = seconds.parse().context("SECONDS")?;
    let senders = (0..4)
        .map(|_| {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_multicast_ttl_v4(1)?;
            s.set_multicast_loop_v4(false)?;
            Ok(s)
        })
        .collect::<std::io::Result<Vec<_>>>()
        .context("UDP sockets")?;
    // IPPROTO_RAW: the packets carry their own IPv4 header.
    let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255))).context("raw socket (needs root)")?;
    let raw_to = SockAddr::from(SocketAddrV4::new(GROUP, 0));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut datagrams, mut ip_packets, mut errors) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut i = 0u64;
    while Instant::now() < end {
        for p in round(case, i, &mut rng)? {
            let r = match &p {
                Packet::Udp(s, port, bytes) => senders[*s].send_to(bytes, SocketAddrV4::new(GROUP, *port)),
                Packet::Ip(bytes) => raw.send_to(bytes, &raw_to),
            };
            match (r, &p) {
                (Err(_), _) => errors += 1,
                (Ok(_), Packet::Udp(..)) => datagrams += 1,
                (Ok(_), Packet::Ip(_)) => ip_packets += 1,
            }
        }
        i += 1;
        // Pace: the packets sent so far should have taken this long at `rate`.
        let due = start + Duration::from_secs_f64((datagrams + ip_packets + errors) as f64 / *rate as f64);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    println!(
        "{}",
        serde_json::json!({ "case": case, "datagrams": datagrams, "ip_packets": ip_packets, "send_errors": errors })
    );
    Ok(())
}
