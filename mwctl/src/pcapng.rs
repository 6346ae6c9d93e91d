//! pcapng writing, and pcapng or classic pcap reading, through the `pcap-file` crate.
//!
//! Timestamps: files written here declare nanosecond resolution (`if_tsresol` 9), which is what
//! `pcap-file` 2.0 writes; when reading, the crate returns an Enhanced Packet Block's raw
//! timestamp units whatever the interface declares, so they are scaled here by the interface's
//! `if_tsresol` (microseconds when absent, as the pcapng specification says).

use anyhow::Context;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption};
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};
use pcap_file::pcapng::{Block, PcapNgReader, PcapNgWriter};
use pcap_file::{DataLink, Endianness};
use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

/// LINKTYPE_ETHERNET.
pub const LINKTYPE_ETHERNET: u16 = 1;

/// Writes a pcapng file: one section, interfaces added as they appear.
pub struct Writer<W: Write> {
    out: PcapNgWriter<W>,
    interfaces: Vec<(String, u16)>,
}

impl<W: Write> Writer<W> {
    /// Writes the section header.
    ///
    /// # Errors
    /// Write failure.
    pub fn new(out: W, application: &str) -> anyhow::Result<Self> {
        let section = SectionHeaderBlock {
            endianness: Endianness::native(),
            major_version: 1,
            minor_version: 0,
            section_length: -1,
            options: vec![SectionHeaderOption::UserApplication(Cow::Owned(application.to_string()))],
        };
        let out = PcapNgWriter::with_section_header(out, section).context("writing the pcapng section header")?;
        Ok(Self { out, interfaces: Vec::new() })
    }

    /// Index of the interface `name` with `link_type`, writing its description the first time.
    ///
    /// # Errors
    /// Write failure.
    pub fn interface(&mut self, name: &str, link_type: u16) -> anyhow::Result<u32> {
        if let Some(i) = self.interfaces.iter().position(|(n, l)| n == name && *l == link_type) {
            return Ok(i as u32);
        }
        let idb = InterfaceDescriptionBlock {
            linktype: DataLink::from(u32::from(link_type)),
            snaplen: 262_144,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(name.to_string())),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        self.out.write_pcapng_block(idb).context("writing a pcapng interface block")?;
        self.interfaces.push((name.to_string(), link_type));
        Ok(self.interfaces.len() as u32 - 1)
    }

    /// Writes one packet of interface `interface` captured at `timestamp_us` (µs since the
    /// epoch), `original_len` bytes long on the wire.
    ///
    /// # Errors
    /// Write failure.
    pub fn packet(&mut self, interface: u32, timestamp_us: i64, original_len: u32, data: &[u8]) -> anyhow::Result<()> {
        let epb = EnhancedPacketBlock {
            interface_id: interface,
            timestamp: Duration::from_micros(u64::try_from(timestamp_us).unwrap_or(0)),
            original_len,
            data: Cow::Borrowed(data),
            options: Vec::new(),
        };
        self.out.write_pcapng_block(epb).context("writing a pcapng packet block")?;
        Ok(())
    }

    /// Flushes the underlying writer.
    ///
    /// # Errors
    /// Write failure.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.out.get_mut().flush()?;
        Ok(())
    }

    /// The underlying writer.
    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out.into_inner()
    }
}

/// One packet read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub link_type: u16,
    pub interface: String,
    pub timestamp_us: i64,
    pub data: Vec<u8>,
}

/// Units per second of an `if_tsresol` value.
fn ticks_per_second(tsresol: u8) -> u128 {
    if tsresol & 0x80 == 0 {
        10u128.saturating_pow(u32::from(tsresol).min(38))
    } else {
        1u128 << (tsresol & 0x7f).min(127)
    }
}

/// Calls `f` for every packet of a pcapng file (any byte order, several sections) or a classic
/// pcap file (µs or ns), in file order, without holding the file in memory.
///
/// # Errors
/// Unreadable or corrupt file, or an error of `f`.
pub fn read_packets(input: impl Read, mut f: impl FnMut(Packet) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let mut input = BufReader::new(input);
    let magic = input.fill_buf().context("reading the capture file")?.get(..4).map(|m| [m[0], m[1], m[2], m[3]]);
    match magic.map(u32::from_le_bytes) {
        Some(0xA1B2_C3D4 | 0xA1B2_3C4D | 0xD4C3_B2A1 | 0x4D3C_B2A1) => {
            let mut r = pcap_file::pcap::PcapReader::new(input).context("not a valid pcap file")?;
            let link = u32::from(r.header().datalink) as u16;
            while let Some(p) = r.next_packet() {
                let p = p.context("corrupt pcap record")?;
                f(Packet {
                    link_type: link,
                    interface: "pcap".into(),
                    timestamp_us: p.timestamp.as_micros() as i64,
                    data: p.data.into_owned(),
                })?;
            }
        }
        Some(0x0A0D_0D0A) => {
            let mut r = PcapNgReader::new(input).context("not a valid pcapng file")?;
            // Interfaces of the current section: name, link type, timestamp units per second.
            let mut ifaces: Vec<(String, u16, u128)> = Vec::new();
            while let Some(block) = r.next_block() {
                match block.context("corrupt pcapng block")? {
                    Block::SectionHeader(_) => ifaces.clear(),
                    Block::InterfaceDescription(idb) => {
                        let mut name = format!("if{}", ifaces.len());
                        let mut tps = 1_000_000;
                        for o in &idb.options {
                            match o {
                                InterfaceDescriptionOption::IfName(n) => name = n.to_string(),
                                InterfaceDescriptionOption::IfTsResol(r) => tps = ticks_per_second(*r).max(1),
                                _ => {}
                            }
                        }
                        ifaces.push((name, u32::from(idb.linktype) as u16, tps));
                    }
                    Block::EnhancedPacket(epb) => {
                        let (name, link, tps) = ifaces
                            .get(epb.interface_id as usize)
                            .cloned()
                            .context("packet of an undeclared interface")?;
                        // The crate returns the raw timestamp units as nanoseconds.
                        let ticks = epb.timestamp.as_nanos();
                        let us = (ticks.saturating_mul(1_000_000) / tps) as i64;
                        f(Packet { link_type: link, interface: name, timestamp_us: us, data: epb.data.into_owned() })?;
                    }
                    Block::SimplePacket(spb) => {
                        let (name, link, _) = ifaces.first().cloned().context("packet of an undeclared interface")?;
                        f(Packet { link_type: link, interface: name, timestamp_us: 0, data: spb.data.into_owned() })?;
                    }
                    _ => {}
                }
            }
        }
        _ => anyhow::bail!("not a pcapng or pcap file"),
    }
    Ok(())
}

/// Every packet of a file (see [`read_packets`]).
///
/// # Errors
/// As [`read_packets`].
#[cfg(test)]
pub fn read_all(input: impl Read) -> anyhow::Result<Vec<Packet>> {
    let mut out = Vec::new();
    read_packets(input, |p| {
        out.push(p);
        Ok(())
    })?;
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
