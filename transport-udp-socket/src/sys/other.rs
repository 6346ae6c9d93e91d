use std::net::Ipv4Addr;

/// Interface names are resolved on Linux only so far; elsewhere give the interface's IPv4
/// address in `network.interface`.
pub(crate) fn interface_ipv4(_name: &str) -> Option<Ipv4Addr> {
    None
}

/// Not enumerated on this platform yet.
pub(crate) fn interfaces() -> Vec<crate::InterfaceInfo> {
    Vec::new()
}

pub(crate) fn force_recv_buffer(_socket: &socket2::Socket, _bytes: usize) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "no SO_RCVBUFFORCE on this platform"))
}

/// Not available on this platform: kernel drops are not counted here.
pub(crate) fn socket_drops(_socket: &socket2::Socket) -> Option<u64> {
    None
}

/// Not available on this platform.
pub(crate) fn ip_reassembly_failures() -> Option<(u64, u64)> {
    None
}

/// Elsewhere a socket receives only the groups it joined already (no IP_MULTICAST_ALL).
pub(crate) fn receive_only_joined_groups(_socket: &socket2::Socket) {}

/// `ENOBUFS` (`WSAENOBUFS` on Windows): no buffer space; the send may succeed later.
#[cfg(windows)]
pub(crate) const ENOBUFS: i32 = 10055;
#[cfg(not(windows))]
pub(crate) const ENOBUFS: i32 = libc::ENOBUFS;

/// One datagram per call where there is no `recvmmsg`.
pub(crate) struct RecvBatch {
    buf: Vec<u8>,
    last: Option<(usize, std::net::SocketAddr)>,
}

impl RecvBatch {
    pub(crate) fn new(_n: usize, slot_len: usize) -> Self {
        Self { buf: vec![0; slot_len], last: None }
    }

    pub(crate) fn recv(&mut self, socket: &std::net::UdpSocket) -> std::io::Result<usize> {
        let (n, from) = socket.recv_from(&mut self.buf)?;
        self.last = Some((n, from));
        Ok(1)
    }

    pub(crate) fn get(&self, _i: usize) -> (&[u8], Option<std::net::SocketAddr>, bool, Option<usize>) {
        let (n, from) = self.last.unwrap_or((0, std::net::SocketAddr::from(([0, 0, 0, 0], 0))));
        // A datagram filling the whole buffer may have been cut (IPv4 payloads are < 65536).
        (&self.buf[..n], Some(from), n >= self.buf.len(), None)
    }
}

/// No segmentation offload is used here (Windows has `UDP_SEND_MSG_SIZE` since 10 1703; not
/// wired yet): `udp.send_mode = frames` sends one datagram per call, `auto` stays with `ecal`.
pub(crate) fn has_segmentation_offload(_socket: &socket2::Socket) -> bool {
    false
}

/// Nothing to set here: datagrams come one by one.
pub(crate) fn receive_offload_buffers(_socket: &socket2::Socket) {}

/// Not read on this platform (`udp.frame_size = auto` takes 1472).
pub(crate) fn path_mtu(_dest: std::net::SocketAddrV4, _interface: Option<Ipv4Addr>) -> Option<usize> {
    None
}

/// One `send_to` per datagram (header and body in one vectored call), `ENOBUFS` waited out for
/// `timeout` each.
pub(crate) fn send_batch(
    socket: &socket2::Socket,
    dest: &socket2::SockAddr,
    datagrams: &[middleware_core::transport::Piece<'_>],
    _offload: bool,
    timeout: std::time::Duration,
) -> (super::BatchSent, Result<(), super::BatchError>) {
    let mut sent = super::BatchSent::default();
    for d in datagrams {
        let bufs = [std::io::IoSlice::new(&d.header), std::io::IoSlice::new(d.body)];
        sent.calls += 1;
        if let Err(e) = crate::retry_no_buffer_space(timeout, || socket.send_to_vectored(&bufs, dest)) {
            return (sent, Err(super::BatchError::Io(e)));
        }
        sent.datagrams += 1;
        sent.bytes += d.header.len() + d.body.len();
    }
    (sent, Ok(()))
}
