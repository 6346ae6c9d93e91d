#![allow(unsafe_code)]

use super::{BatchError, BatchSent};
use std::ffi::CStr;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

/// First IPv4 address of the interface called `name`.
pub(crate) fn interface_ipv4(name: &str) -> Option<Ipv4Addr> {
    interfaces().into_iter().find(|i| i.name == name).map(|i| i.ipv4)
}

/// Every interface with an IPv4 address (one entry per address).
pub(crate) fn interfaces() -> Vec<crate::InterfaceInfo> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned; it stays valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let n = unsafe { CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: ifa_addr is non-null and points to a sockaddr of at least its family's size.
        let family = unsafe { (*ifa.ifa_addr).sa_family };
        if i32::from(family) == libc::AF_INET {
            // SAFETY: family AF_INET means the sockaddr is a sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            let flags = ifa.ifa_flags;
            found.push(crate::InterfaceInfo {
                name: n.to_string_lossy().into_owned(),
                ipv4: Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                up: flags & libc::IFF_UP as u32 != 0,
                multicast: flags & libc::IFF_MULTICAST as u32 != 0,
                loopback: flags & libc::IFF_LOOPBACK as u32 != 0,
            });
        }
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    found
}

/// Sets the integer socket option `level`/`name` to `value`.
fn set_int_option(
    socket: &socket2::Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: valid fd, option value is a c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Reads the integer socket option `level`/`name`.
fn int_option(socket: &socket2::Socket, level: libc::c_int, name: libc::c_int) -> std::io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd; the kernel writes at most `len` bytes into `v`.
    let rc =
        unsafe { libc::getsockopt(socket.as_raw_fd(), level, name, (&mut v as *mut libc::c_int).cast(), &mut len) };
    if rc == 0 {
        Ok(v)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// SO_RCVBUFFORCE: exceeds net.core.rmem_max when the process has CAP_NET_ADMIN.
pub(crate) fn force_recv_buffer(socket: &socket2::Socket, bytes: usize) -> std::io::Result<()> {
    set_int_option(socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes.min(i32::MAX as usize / 2) as libc::c_int)
}

/// Datagrams the kernel dropped for this socket (receive buffer full, or a bad checksum on
/// delivery): the `drops` column of `/proc/self/net/udp` for the socket's inode. Read when
/// statistics are asked for, so the receive path stays a plain `recvfrom`.
pub(crate) fn socket_drops(socket: &socket2::Socket) -> Option<u64> {
    // SAFETY: fstat writes into a zeroed stat buffer for a descriptor this socket owns.
    let inode = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(socket.as_raw_fd(), &mut st) != 0 {
            return None;
        }
        st.st_ino
    };
    let table = std::fs::read_to_string("/proc/self/net/udp").ok()?;
    drops_for_inode(&table, inode)
}

/// The `drops` column (the last) of the line of `/proc/net/udp` whose `inode` column (the 10th)
/// is `inode`.
fn drops_for_inode(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(9)?.parse::<u64>().ok()? == inode).then(|| f.last()?.parse().ok()).flatten()
    })
}

/// This network namespace's IPv4 reassembly failures and timeouts (`ReasmFails`,
/// `ReasmTimeout` in `/proc/self/net/snmp`): the kernel reassembles fragmented datagrams before
/// a socket sees them, so fragments it drops (memory limit `ipfrag_high_thresh`, overlaps,
/// `ipfrag_time` expiry) are counted only there. Shared by every process in the namespace.
pub(crate) fn ip_reassembly_failures() -> Option<(u64, u64)> {
    let snmp = std::fs::read_to_string("/proc/self/net/snmp").ok()?;
    ip_counters(&snmp, &["ReasmFails", "ReasmTimeout"]).map(|v| (v[0], v[1]))
}

/// Values of the named fields of the `Ip:` header/value line pair.
fn ip_counters(snmp: &str, names: &[&str]) -> Option<Vec<u64>> {
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip: "));
    let (head, values) = (ip.next()?, ip.next()?);
    let head: Vec<&str> = head.split_whitespace().collect();
    let values: Vec<&str> = values.split_whitespace().collect();
    names.iter().map(|n| values.get(head.iter().position(|h| h == n)?)?.parse().ok()).collect()
}

/// Clears IP_MULTICAST_ALL (on by default): the socket then receives multicast only for the
/// groups it joined itself. Failure (kernels before 2.6.31) keeps the default, logged.
pub(crate) fn receive_only_joined_groups(socket: &socket2::Socket) {
    if let Err(e) = socket.set_multicast_all_v4(false) {
        tracing::debug!(error = %e, "IP_MULTICAST_ALL could not be cleared");
    }
}

/// `UDP_GRO` (`linux/udp.h`, Linux 5.0).
const UDP_GRO: libc::c_int = 104;

/// Sets `UDP_GRO` on a receive socket: a segmentation offload buffer that arrives uncut (sent
/// on this host, or over a veth link), or equal-sized datagrams of one sender that the receive
/// path merges, come as one buffer with the segment size in a control message, instead of one
/// socket buffer each; [`RecvBatch::get`] reports the size and the receive loop cuts the buffer
/// back into the datagrams at exactly that size. Refused (kernels before 5.0): logged, and
/// datagrams come one by one.
pub(crate) fn receive_offload_buffers(socket: &socket2::Socket) {
    if let Err(e) = set_int_option(socket, libc::SOL_UDP, UDP_GRO, 1) {
        tracing::debug!(error = %e, "UDP_GRO not available");
    }
}

/// `ENOBUFS`: the interface's queue is full; the send may succeed when it drains.
pub(crate) const ENOBUFS: i32 = libc::ENOBUFS;

/// Receives up to `n` datagrams per system call with `recvmmsg(MSG_WAITFORONE)`: it blocks
/// (up to the socket's SO_RCVTIMEO) for the first, then takes whatever else is queued.
pub(crate) struct RecvBatch {
    bufs: Vec<u8>,
    slot_len: usize,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// One control buffer per slot, for `UDP_GRO`'s segment size.
    cmsgs: Vec<Cmsg>,
}

// SAFETY: the raw pointers inside point into the struct's own heap buffers only.
#[allow(unsafe_code)]
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    pub(crate) fn new(n: usize, slot_len: usize) -> Self {
        let n = n.max(1);
        // SAFETY: all-zero is a valid value of these plain C structs.
        let zero_addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let zero_iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
        // SAFETY: as above.
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        Self {
            bufs: vec![0; n * slot_len],
            slot_len,
            addrs: vec![zero_addr; n],
            iovs: vec![zero_iov; n],
            hdrs: vec![zero_hdr; n],
            cmsgs: vec![Cmsg([0; 32]); n],
        }
    }

    /// Waits for at least one datagram; returns how many arrived.
    pub(crate) fn recv(&mut self, socket: &std::net::UdpSocket) -> std::io::Result<usize> {
        let n = self.hdrs.len();
        // Raw pointers taken once from each buffer (no `&mut` to an element that a later
        // access would invalidate); none of these vectors is resized after `new`.
        let (bufs, iovs, addrs) = (self.bufs.as_mut_ptr(), self.iovs.as_mut_ptr(), self.addrs.as_mut_ptr());
        let cmsgs = self.cmsgs.as_mut_ptr();
        for i in 0..n {
            // SAFETY: i < n = iovs.len() = addrs.len(), and i * slot_len + slot_len <= bufs.len().
            let (iov, addr) = unsafe {
                let iov = iovs.add(i);
                *iov = libc::iovec { iov_base: bufs.add(i * self.slot_len).cast(), iov_len: self.slot_len };
                (iov, addrs.add(i))
            };
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = addr.cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            // SAFETY: i < n = cmsgs.len().
            h.msg_hdr.msg_control = unsafe { cmsgs.add(i) }.cast();
            h.msg_hdr.msg_controllen = std::mem::size_of::<Cmsg>() as _;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: hdrs holds n initialised headers whose pointers target live buffers of the
        // sizes given; the kernel writes at most those sizes.
        let r = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    /// Datagram `i` of the last `recv`: bytes, sender, whether the kernel cut it short, and the
    /// segment size when it holds several datagrams of one sender merged by `UDP_GRO` (each
    /// `segment` bytes, the last possibly shorter).
    pub(crate) fn get(&self, i: usize) -> (&[u8], Option<std::net::SocketAddr>, bool, Option<usize>) {
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(self.slot_len);
        let data = &self.bufs[i * self.slot_len..i * self.slot_len + len];
        let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        let a = &self.addrs[i];
        let from = (i32::from(a.ss_family) == libc::AF_INET).then(|| {
            // SAFETY: family AF_INET means the storage holds a sockaddr_in.
            let sin = unsafe { &*(a as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            std::net::SocketAddr::from((Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)), u16::from_be(sin.sin_port)))
        });
        (data, from, truncated, gro_segment(&h.msg_hdr))
    }
}

/// `UDP_SEGMENT` (`linux/udp.h`, Linux 4.18): the size each segment of a send is cut to.
const UDP_SEGMENT: libc::c_int = 103;

/// Whether this kernel knows `UDP_SEGMENT` (reading it succeeds from Linux 4.18). The device
/// may still refuse a buffer (no checksum offload: `EIO`; a segment larger than the path MTU:
/// `EINVAL`), which [`send_batch`] reports as [`BatchError::Offload`].
pub(crate) fn has_segmentation_offload(socket: &socket2::Socket) -> bool {
    int_option(socket, libc::SOL_UDP, UDP_SEGMENT).is_ok()
}

/// The MTU of the route toward `dest` (through `interface` for multicast), read with
/// `IP_MTU` from a throwaway socket connected there; `None` where the route or the option is
/// missing.
pub(crate) fn path_mtu(dest: std::net::SocketAddrV4, interface: Option<Ipv4Addr>) -> Option<usize> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP)).ok()?;
    if let Some(i) = interface {
        s.set_multicast_if_v4(&i).ok()?;
    }
    // Connecting to a broadcast address needs SO_BROADCAST (local mode).
    s.set_broadcast(true).ok()?;
    s.connect(&dest.into()).ok()?;
    int_option(&s, libc::IPPROTO_IP, libc::IP_MTU).ok().filter(|&v| v > 0).map(|v| v as usize)
}

/// The `UDP_GRO` segment size in the control messages `recvmmsg` wrote into `h`'s buffer.
// `msg_controllen` is a `usize` on glibc and a `socklen_t` on musl: the cast is for the latter.
#[allow(clippy::unnecessary_cast)]
fn gro_segment(h: &libc::msghdr) -> Option<usize> {
    if h.msg_control.is_null() || (h.msg_controllen as usize) < std::mem::size_of::<libc::cmsghdr>() {
        return None;
    }
    // SAFETY: the kernel wrote msg_controllen bytes of well-formed control messages into the
    // buffer msg_control points at (a live slot of `cmsgs`); the CMSG_* macros stay within them.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(v).ok().filter(|&s| s > 0);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// A control message buffer for one `UDP_SEGMENT` value, aligned for `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Cmsg([u8; 32]);

/// Sends `datagrams` (each its header then its body) to `dest` with `sendmmsg`: with
/// `offload`, each run of up to 64 datagrams of one size (the last of a run may be shorter),
/// at most 65 507 bytes in all, goes as one buffer with `UDP_SEGMENT` set to that size, which
/// the kernel or the device cuts back into those datagrams; without it, one message per
/// datagram. Nothing is copied: the iovecs point at the headers and bodies. `ENOBUFS` is waited
/// out for `timeout` per call. Returns what was sent, and the error that stopped it.
pub(crate) fn send_batch(
    socket: &socket2::Socket,
    dest: &socket2::SockAddr,
    datagrams: &[middleware_core::transport::Piece<'_>],
    offload: bool,
    timeout: std::time::Duration,
) -> (BatchSent, Result<(), BatchError>) {
    let len = |i: usize| datagrams[i].header.len() + datagrams[i].body.len();
    // Runs: [start, end) of datagrams per message, and each message's segment size (0: none).
    let runs: Vec<(usize, usize, usize)> = if offload {
        middleware_core::transport::offload_runs(datagrams)
            .map(|(r, size)| (r.start, r.end, if r.len() > 1 { size } else { 0 }))
            .collect()
    } else {
        (0..datagrams.len()).map(|i| (i, i + 1, 0)).collect()
    };
    let zero_iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
    let mut iovs = vec![zero_iov; datagrams.len() * 2];
    let mut cmsgs = vec![Cmsg([0; 32]); runs.iter().filter(|r| r.2 > 0).count()];
    // SAFETY: all-zero is a valid mmsghdr.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; runs.len()];
    // First every iovec (each run's range of them noted), then the headers pointing into them
    // through one pointer taken after the last write.
    let mut n_iov = 0;
    let mut iov_ranges = Vec::with_capacity(runs.len());
    for &(start, end, _) in &runs {
        let first_iov = n_iov;
        for d in &datagrams[start..end] {
            for part in [&d.header[..], d.body] {
                if !part.is_empty() {
                    // The kernel only reads through iov_base on send.
                    iovs[n_iov] = libc::iovec { iov_base: part.as_ptr() as *mut libc::c_void, iov_len: part.len() };
                    n_iov += 1;
                }
            }
        }
        iov_ranges.push((first_iov, n_iov - first_iov));
    }
    let (iov_base, cmsg_bufs) = (iovs.as_mut_ptr(), cmsgs.as_mut_ptr());
    let mut n_cmsg = 0;
    for (m, (&(_, _, seg), &(first_iov, n))) in runs.iter().zip(&iov_ranges).enumerate() {
        let h = &mut msgs[m].msg_hdr;
        h.msg_name = dest.as_ptr() as *mut libc::c_void;
        h.msg_namelen = dest.len();
        // SAFETY: first_iov + n <= iovs.len(); iovs is not touched again until it is dropped.
        h.msg_iov = unsafe { iov_base.add(first_iov) };
        h.msg_iovlen = n as _;
        if seg > 0 {
            // SAFETY: n_cmsg < cmsgs.len() (one buffer per run with a segment size).
            h.msg_control = unsafe { cmsg_bufs.add(n_cmsg) }.cast();
            n_cmsg += 1;
            // SAFETY: CMSG_SPACE is a pure size computation.
            h.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as _;
            // SAFETY: msg_control points at 32 aligned bytes, enough for one cmsghdr with a u16
            // (CMSG_SPACE(2) = 24), so CMSG_FIRSTHDR is non-null and its data fits.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(h);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg as u16);
            }
        }
    }
    let mut sent = BatchSent::default();
    let mut done = 0;
    while done < msgs.len() {
        let rest = msgs.len() - done;
        let r = crate::retry_no_buffer_space(timeout, || {
            // SAFETY: msgs[done..] are initialised headers whose pointers target the caller's
            // datagrams, `dest`, and iovs/cmsgs, all alive and unmoved for this call.
            let k = unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr().add(done), rest as libc::c_uint, 0) };
            if k < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(k as usize)
            }
        });
        sent.calls += 1;
        match r {
            Ok(0) => {
                let e = std::io::Error::new(std::io::ErrorKind::WriteZero, "sendmmsg sent nothing");
                return (sent, Err(BatchError::Io(e)));
            }
            Ok(k) => {
                for &(start, end, seg) in &runs[done..done + k] {
                    sent.datagrams += end - start;
                    sent.bytes += (start..end).map(len).sum::<usize>();
                    sent.offload_buffers += usize::from(seg > 0);
                }
                done += k;
            }
            Err(e) => {
                let offload_refused = runs[done].2 > 0
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOPROTOOPT)
                    );
                return (sent, Err(if offload_refused { BatchError::Offload(e) } else { BatchError::Io(e) }));
            }
        }
    }
    (sent, Ok(()))
}

/// Turns off UDP checksums on `socket` (`SO_NO_CHECK`): the kernel then refuses segmentation
/// offload with `EINVAL`, which tests use to see the fallback.
#[cfg(test)]
pub(crate) fn refuse_offload(socket: &socket2::Socket) {
    set_int_option(socket, libc::SOL_SOCKET, libc::SO_NO_CHECK, 1).expect("SO_NO_CHECK");
}

#[cfg(test)]
mod tests {
    #[test]
    fn ip_counters_by_name() {
        let t = "Ip: Forwarding DefaultTTL ReasmTimeout ReasmReqds ReasmOKs ReasmFails\nIp: 2 64 7 100 20 33\nIcmp: InMsgs\nIcmp: 3\n";
        assert_eq!(super::ip_counters(t, &["ReasmFails", "ReasmTimeout"]), Some(vec![33, 7]));
        assert_eq!(super::ip_counters(t, &["Nope"]), None);
    }

    #[test]
    fn drops_come_from_the_inode_line() {
        let t = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                 1: 00000000:36B2 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4711 2 0000000000000000 0\n\
                 2: 00000000:36B0 00000000:0000 07 00000000:00034000 00:00000000 00000000     0        0 4712 2 0000000000000000 37\n";
        assert_eq!(super::drops_for_inode(t, 4712), Some(37));
        assert_eq!(super::drops_for_inode(t, 4711), Some(0));
        assert_eq!(super::drops_for_inode(t, 9), None);
    }
}
