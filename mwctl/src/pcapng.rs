//! pcapng writing and reading (pcapng also read back as classic pcap), written from the pcapng
//! specification (draft-ietf-opsawg-pcapng): Section Header, Interface Description and Enhanced
//! Packet blocks. Timestamps in microseconds.

use anyhow::{bail, Context};
use std::io::{Read, Write};

const SHB: u32 = 0x0A0D_0D0A;
const IDB: u32 = 1;
const SPB: u32 = 3;
const EPB: u32 = 6;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
/// Largest block accepted when reading: a corrupt length must not allocate gigabytes.
const MAX_BLOCK: usize = 16 << 20;

/// LINKTYPE_ETHERNET.
pub const LINKTYPE_ETHERNET: u16 = 1;

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// Writes a pcapng file: one section, interfaces added as they appear.
pub struct Writer<W: Write> {
    out: W,
    interfaces: Vec<(String, u16)>,
    pub packets: u64,
    pub bytes: u64,
}

impl<W: Write> Writer<W> {
    /// Writes the section header.
    ///
    /// # Errors
    /// Write failure.
    pub fn new(mut out: W, application: &str) -> anyhow::Result<Self> {
        let mut body = Vec::new();
        body.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&(-1i64).to_le_bytes());
        option(&mut body, 4, application.as_bytes()); // shb_userappl
        option(&mut body, 0, &[]);
        write_block(&mut out, SHB, &body)?;
        Ok(Self { out, interfaces: Vec::new(), packets: 0, bytes: 0 })
    }

    /// Index of the interface `name` with `link_type`, writing its description the first time.
    ///
    /// # Errors
    /// Write failure.
    pub fn interface(&mut self, name: &str, link_type: u16) -> anyhow::Result<u32> {
        if let Some(i) = self.interfaces.iter().position(|(n, l)| n == name && *l == link_type) {
            return Ok(i as u32);
        }
        let mut body = Vec::new();
        body.extend_from_slice(&link_type.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&262_144u32.to_le_bytes());
        option(&mut body, 2, name.as_bytes()); // if_name
        option(&mut body, 9, &[6]); // if_tsresol: microseconds
        option(&mut body, 0, &[]);
        write_block(&mut self.out, IDB, &body)?;
        self.interfaces.push((name.to_string(), link_type));
        Ok(self.interfaces.len() as u32 - 1)
    }

    /// Appends one packet captured on `interface` at `timestamp_us` (µs since the epoch).
    ///
    /// # Errors
    /// Write failure.
    pub fn packet(&mut self, interface: u32, timestamp_us: i64, original_len: u32, data: &[u8]) -> anyhow::Result<()> {
        let ts = timestamp_us.max(0) as u64;
        let mut body = Vec::with_capacity(20 + pad4(data.len()));
        body.extend_from_slice(&interface.to_le_bytes());
        body.extend_from_slice(&((ts >> 32) as u32).to_le_bytes());
        body.extend_from_slice(&(ts as u32).to_le_bytes());
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(&original_len.max(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
        body.resize(20 + pad4(data.len()), 0);
        write_block(&mut self.out, EPB, &body)?;
        self.packets += 1;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// # Errors
    /// Write failure.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.out.flush().context("flushing the capture file")
    }

    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out
    }
}

fn option(body: &mut Vec<u8>, code: u16, value: &[u8]) {
    body.extend_from_slice(&code.to_le_bytes());
    body.extend_from_slice(&(value.len() as u16).to_le_bytes());
    body.extend_from_slice(value);
    body.resize(pad4(body.len()), 0);
}

fn write_block(out: &mut impl Write, kind: u32, body: &[u8]) -> anyhow::Result<()> {
    let total = (12 + body.len()) as u32;
    out.write_all(&kind.to_le_bytes())?;
    out.write_all(&total.to_le_bytes())?;
    out.write_all(body)?;
    out.write_all(&total.to_le_bytes())?;
    Ok(())
}

/// One packet read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub link_type: u16,
    pub interface: String,
    pub timestamp_us: i64,
    pub data: Vec<u8>,
}

#[derive(Clone, Copy)]
struct Endian(bool);

impl Endian {
    fn u16(self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        if self.0 {
            u16::from_be_bytes(a)
        } else {
            u16::from_le_bytes(a)
        }
    }
    fn u32(self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.0 {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    }
}

/// Reads every packet of a pcapng file (any byte order, several sections) or a classic pcap
/// file (µs or ns).
///
/// # Errors
/// Unreadable or corrupt file; the message gives the offset.
#[allow(clippy::manual_is_multiple_of)] // kept as the arithmetic the pcapng spec states
pub fn read_all(mut input: impl Read) -> anyhow::Result<Vec<Packet>> {
    let mut data = Vec::new();
    input.read_to_end(&mut data).context("reading the capture file")?;
    if data.len() >= 24 {
        let m = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        match m {
            0xA1B2_C3D4 | 0xA1B2_3C4D => return read_classic(&data, Endian(false), m == 0xA1B2_3C4D),
            0xD4C3_B2A1 | 0x4D3C_B2A1 => return read_classic(&data, Endian(true), m == 0x4D3C_B2A1),
            _ => {}
        }
    }
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut e = Endian(false);
    // (name, link type, ticks per second)
    let mut ifaces: Vec<(String, u16, u64)> = Vec::new();
    while pos < data.len() {
        if data.len() - pos < 12 {
            bail!("truncated block header at offset {pos}");
        }
        let kind_le = u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]);
        if kind_le == SHB {
            let bom = &data[pos + 8..pos + 12];
            e = match u32::from_le_bytes([bom[0], bom[1], bom[2], bom[3]]) {
                BYTE_ORDER_MAGIC => Endian(false),
                0x4D3C_2B1A => Endian(true),
                _ => bail!("bad byte-order magic at offset {pos}: not a pcapng file"),
            };
            ifaces.clear();
        } else if pos == 0 {
            bail!("not a pcapng or pcap file (first block type {kind_le:#x})");
        }
        let kind = e.u32(&data[pos..]);
        let len = e.u32(&data[pos + 4..]) as usize;
        if len < 12 || len % 4 != 0 || len > MAX_BLOCK || pos + len > data.len() {
            bail!("corrupt block length {len} at offset {pos}");
        }
        let body = &data[pos + 8..pos + len - 4];
        match kind {
            IDB if body.len() >= 8 => {
                let link = e.u16(body);
                let (mut name, mut tps) = (format!("if{}", ifaces.len()), 1_000_000u64);
                for (code, v) in options(&body[8..], e) {
                    match code {
                        2 => name = String::from_utf8_lossy(v).into_owned(),
                        9 if !v.is_empty() => {
                            let r = v[0];
                            tps = if r & 0x80 == 0 {
                                10u64.saturating_pow(u32::from(r))
                            } else {
                                1u64 << (r & 0x3f).min(63)
                            };
                        }
                        _ => {}
                    }
                }
                ifaces.push((name, link, tps.max(1)));
            }
            EPB if body.len() >= 20 => {
                let id = e.u32(body) as usize;
                let ticks = (u64::from(e.u32(&body[4..])) << 32) | u64::from(e.u32(&body[8..]));
                let cap = e.u32(&body[12..]) as usize;
                if 20 + cap > body.len() {
                    bail!("packet longer than its block at offset {pos}");
                }
                let (name, link, tps) = ifaces.get(id).cloned().context("packet of an undeclared interface")?;
                let us = (u128::from(ticks) * 1_000_000 / u128::from(tps)) as i64;
                out.push(Packet {
                    link_type: link,
                    interface: name,
                    timestamp_us: us,
                    data: body[20..20 + cap].to_vec(),
                });
            }
            SPB if body.len() >= 4 => {
                let (name, link, _) = ifaces.first().cloned().context("packet of an undeclared interface")?;
                let orig = e.u32(body) as usize;
                let cap = orig.min(body.len() - 4);
                out.push(Packet { link_type: link, interface: name, timestamp_us: 0, data: body[4..4 + cap].to_vec() });
            }
            _ => {}
        }
        pos += len;
    }
    Ok(out)
}

fn options(mut b: &[u8], e: Endian) -> Vec<(u16, &[u8])> {
    let mut v = Vec::new();
    while b.len() >= 4 {
        let (code, len) = (e.u16(b), e.u16(&b[2..]) as usize);
        if code == 0 || 4 + len > b.len() {
            break;
        }
        v.push((code, &b[4..4 + len]));
        b = &b[(4 + pad4(len)).min(b.len())..];
    }
    v
}

fn read_classic(data: &[u8], e: Endian, nanos: bool) -> anyhow::Result<Vec<Packet>> {
    let link = (e.u32(&data[20..]) & 0xFFFF) as u16;
    let mut out = Vec::new();
    let mut pos = 24;
    while pos < data.len() {
        if data.len() - pos < 16 {
            bail!("truncated record header at offset {pos}");
        }
        let (sec, frac) = (i64::from(e.u32(&data[pos..])), i64::from(e.u32(&data[pos + 4..])));
        let cap = e.u32(&data[pos + 8..]) as usize;
        if cap > MAX_BLOCK || pos + 16 + cap > data.len() {
            bail!("corrupt record length {cap} at offset {pos}");
        }
        let us = sec * 1_000_000 + if nanos { frac / 1000 } else { frac };
        out.push(Packet {
            link_type: link,
            interface: "pcap".into(),
            timestamp_us: us,
            data: data[pos + 16..pos + 16 + cap].to_vec(),
        });
        pos += 16 + cap;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_round_trip() {
        let mut w = Writer::new(Vec::new(), "test").unwrap();
        let a = w.interface("eth0", LINKTYPE_ETHERNET).unwrap();
        let b = w.interface("lo", 113).unwrap();
        assert_eq!(w.interface("eth0", LINKTYPE_ETHERNET).unwrap(), a);
        w.packet(a, 1_700_000_000_123_456, 5, b"hello").unwrap();
        w.packet(b, 1_700_000_001_000_000, 64, &[1, 2, 3, 4]).unwrap();
        let bytes = w.into_inner();
        assert_eq!(bytes.len() % 4, 0);
        let p = read_all(&bytes[..]).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[0],
            Packet {
                link_type: 1,
                interface: "eth0".into(),
                timestamp_us: 1_700_000_000_123_456,
                data: b"hello".to_vec()
            }
        );
        assert_eq!(p[1].link_type, 113);
        assert_eq!(p[1].data, vec![1, 2, 3, 4]);
    }

    #[test]
    fn every_truncation_is_an_error_or_exactly_the_whole_blocks() {
        let mut w = Writer::new(Vec::new(), "t").unwrap();
        let i = w.interface("x", 1).unwrap();
        for k in 0..3 {
            w.packet(i, k, 3, &[k as u8; 3]).unwrap();
        }
        let bytes = w.into_inner();
        // Block ends and the packets complete at each: SHB, IDB, then three packets.
        let mut ends = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            pos += u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
            ends.push(pos);
        }
        assert_eq!(ends.len(), 5);
        for n in 1..=bytes.len() {
            match ends.iter().position(|&e| e == n) {
                Some(b) => {
                    let p = read_all(&bytes[..n]).unwrap();
                    assert_eq!(p.len(), b.saturating_sub(1), "cut at {n}");
                    for (k, pk) in p.iter().enumerate() {
                        assert_eq!(pk.data, vec![k as u8; 3]);
                    }
                }
                None => assert!(read_all(&bytes[..n]).is_err(), "cut at {n} inside a block must be an error"),
            }
        }
        let mut bad = bytes.clone();
        bad[4] = 0xff; // SHB length
        assert!(read_all(&bad[..]).is_err());
    }

    #[test]
    fn classic_pcap_is_read() {
        // Header: magic, version 2.4, thiszone, sigfigs, snaplen, network; then one record.
        let mut h = Vec::new();
        h.extend_from_slice(&0xA1B2_C3D4u32.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&[0; 8]);
        h.extend_from_slice(&65535u32.to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes());
        for v in [10u32, 20, 2, 2] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h.extend_from_slice(&[7, 8]);
        let p = read_all(&h[..]).unwrap();
        assert_eq!(
            p,
            vec![Packet { link_type: 1, interface: "pcap".into(), timestamp_us: 10_000_020, data: vec![7, 8] }]
        );
    }
}
