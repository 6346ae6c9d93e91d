//! Frames -> UDP payloads for the ports and destinations we listen on: link decode, IPv4
//! reassembly, UDP header, demultiplexing. Pure: the capture glue and the offline replay tests
//! drive the same code.

use crate::frame::{decode, parse_udp, FrameError, LinkType};
use crate::ip_reassembly::{IpReassembler, IpReassemblyConfig, IpReassemblyStats};
use std::borrow::Cow;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Instant;

const UDP: u8 = 17;

/// Counters of the decode path; every frame lands in exactly one of the `frames_*` buckets
/// or becomes (part of) a delivered or unwanted datagram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DemuxStats {
    /// Frames decoded.
    pub frames: u64,
    /// Valid frames of another protocol (ARP, IPv6, ...), normally kept out by the kernel filter.
    pub frames_not_ipv4: u64,
    /// Truncated frames or malformed IPv4 headers.
    pub frames_malformed: u64,
    /// IPv4 but not UDP (e.g. IGMP).
    pub frames_not_udp: u64,
    /// Reassembled datagrams with a bad UDP header.
    pub udp_malformed: u64,
    /// UDP datagrams to a port or destination nobody here listens on.
    pub udp_unwanted: u64,
    /// UDP datagrams handed on.
    pub delivered: u64,
    /// UDP payload bytes handed on.
    pub delivered_bytes: u64,
}

/// One delivered datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery<'a> {
    /// The sender's IPv4 address and UDP port.
    pub source: SocketAddr,
    /// The group (or broadcast address) and port it was sent to.
    pub destination: SocketAddrV4,
    /// The UDP payload (an eCAL datagram), where it lies: in the ring, or in the reassembly buffer.
    pub payload: &'a [u8],
}

/// The pure receive pipeline of one capture device.
#[derive(Debug)]
pub struct Demux {
    link: LinkType,
    ip: IpReassembler,
    stats: DemuxStats,
}

impl Demux {
    /// A pipeline for frames of link type `link`, with IPv4 reassembly bounded by `config`.
    pub fn new(link: LinkType, config: IpReassemblyConfig) -> Self {
        Self { link, ip: IpReassembler::new(config), stats: DemuxStats::default() }
    }

    /// A snapshot of the decode counters.
    pub fn stats(&self) -> DemuxStats {
        self.stats
    }

    /// A snapshot of the IPv4 reassembly counters.
    pub fn ip_stats(&self) -> IpReassemblyStats {
        self.ip.stats()
    }

    /// IPv4 datagrams with fragments still missing.
    pub fn partial_ip_datagrams(&self) -> usize {
        self.ip.partial_datagrams()
    }

    /// Runs expiry of partial IP datagrams (also done while frames arrive).
    pub fn expire(&mut self, now: Instant) {
        self.ip.expire(now);
    }

    /// Decodes one captured frame. `wanted(destination)` says whether anyone listens there;
    /// `deliver` gets each complete UDP datagram that is wanted.
    pub fn on_frame(
        &mut self,
        now: Instant,
        frame: &[u8],
        wanted: impl Fn(SocketAddrV4) -> bool,
        mut deliver: impl FnMut(Delivery<'_>),
    ) {
        self.stats.frames += 1;
        let packet = match decode(self.link, frame) {
            Ok(p) => p,
            Err(FrameError::NotIpv4) => {
                self.stats.frames_not_ipv4 += 1;
                return;
            }
            Err(e) => {
                self.stats.frames_malformed += 1;
                tracing::debug!(error = %e, len = frame.len(), "malformed frame");
                return;
            }
        };
        if packet.protocol != UDP {
            self.stats.frames_not_udp += 1;
            return;
        }
        let (src, dst) = (packet.src, packet.dst);
        let Some(ip_payload) = self.ip.push(now, &packet) else { return };
        match parse_udp(&ip_payload) {
            Ok(udp) => {
                let destination = SocketAddrV4::new(dst, udp.dst_port);
                if wanted(destination) {
                    self.stats.delivered += 1;
                    self.stats.delivered_bytes += udp.payload.len() as u64;
                    deliver(Delivery {
                        source: SocketAddr::V4(SocketAddrV4::new(src, udp.src_port)),
                        destination,
                        payload: udp.payload,
                    });
                } else {
                    self.stats.udp_unwanted += 1;
                }
            }
            Err(e) => {
                self.stats.udp_malformed += 1;
                tracing::debug!(error = %e, %src, "malformed UDP header");
            }
        }
        if let Cow::Owned(buf) = ip_payload {
            self.ip.recycle(buf);
        }
    }
}
