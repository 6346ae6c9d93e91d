//! libpcap / Npcap, loaded at run time (`dlopen` / `LoadLibraryExW`), never linked.
//!
//! A program built with this crate therefore starts on a machine without the capture library
//! (a Windows binary that imports `wpcap.dll` dies before `main` when Npcap is missing) and its
//! `auto` transport falls back to sockets. This is the only module that calls into the library;
//! the declarations follow pcap(3PCAP). Where the library lives is platform code (`sys`).

#![allow(unsafe_code)]

use crate::sys;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::net::Ipv4Addr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;

/// Frames handed over per `dispatch` call at most.
pub const DISPATCH_MAX: c_int = 4096;
use std::sync::Mutex;

const ERRBUF_SIZE: usize = 256;
/// `PCAP_NETMASK_UNKNOWN`: our filters never use `ip broadcast`.
const NETMASK_UNKNOWN: u32 = 0xffff_ffff;
const IF_LOOPBACK: u32 = 0x1;
const IF_UP: u32 = 0x2;
const ERROR_NO_SUCH_DEVICE: c_int = -5;
const ERROR_PERM_DENIED: c_int = -8;
const ERROR_IFACE_NOT_UP: c_int = -9;
const ERROR_PROMISC_PERM_DENIED: c_int = -11;

/// Opaque `pcap_t`.
#[repr(C)]
struct Pcap {
    _private: [u8; 0],
}

/// `pcap_if_t`.
#[repr(C)]
struct RawIf {
    next: *mut RawIf,
    name: *mut c_char,
    description: *mut c_char,
    addresses: *mut RawAddr,
    flags: u32,
}

/// `pcap_addr_t`.
#[repr(C)]
struct RawAddr {
    next: *mut RawAddr,
    addr: *const u8,
    netmask: *const u8,
    broadaddr: *const u8,
    dstaddr: *const u8,
}

/// `struct bpf_program`.
#[repr(C)]
struct BpfProgram {
    len: c_uint,
    insns: *mut c_void,
}

/// `struct pcap_stat`, with room for the three extra counters Npcap's header declares on
/// Windows (only the first three are read).
#[repr(C)]
#[derive(Default)]
struct RawStat {
    recv: c_uint,
    drop: c_uint,
    ifdrop: c_uint,
    _windows_extra: [c_uint; 3],
}

/// `struct pcap_pkthdr`.
#[repr(C)]
struct PktHdr {
    ts: sys::Timeval,
    caplen: u32,
    len: u32,
}

type Handler = unsafe extern "C" fn(*mut u8, *const PktHdr, *const u8);

/// The functions used, resolved once when the library loads.
struct Api {
    lib_version: unsafe extern "C" fn() -> *const c_char,
    findalldevs: unsafe extern "C" fn(*mut *mut RawIf, *mut c_char) -> c_int,
    freealldevs: unsafe extern "C" fn(*mut RawIf),
    create: unsafe extern "C" fn(*const c_char, *mut c_char) -> *mut Pcap,
    open_offline: unsafe extern "C" fn(*const c_char, *mut c_char) -> *mut Pcap,
    set_snaplen: unsafe extern "C" fn(*mut Pcap, c_int) -> c_int,
    set_promisc: unsafe extern "C" fn(*mut Pcap, c_int) -> c_int,
    set_timeout: unsafe extern "C" fn(*mut Pcap, c_int) -> c_int,
    set_buffer_size: unsafe extern "C" fn(*mut Pcap, c_int) -> c_int,
    /// libpcap >= 1.5.
    set_immediate_mode: Option<unsafe extern "C" fn(*mut Pcap, c_int) -> c_int>,
    activate: unsafe extern "C" fn(*mut Pcap) -> c_int,
    statustostr: unsafe extern "C" fn(c_int) -> *const c_char,
    geterr: unsafe extern "C" fn(*mut Pcap) -> *const c_char,
    compile: unsafe extern "C" fn(*mut Pcap, *mut BpfProgram, *const c_char, c_int, u32) -> c_int,
    setfilter: unsafe extern "C" fn(*mut Pcap, *mut BpfProgram) -> c_int,
    freecode: unsafe extern "C" fn(*mut BpfProgram),
    setdirection: Option<unsafe extern "C" fn(*mut Pcap, c_int) -> c_int>,
    setnonblock: unsafe extern "C" fn(*mut Pcap, c_int, *mut c_char) -> c_int,
    dispatch: unsafe extern "C" fn(*mut Pcap, c_int, Handler, *mut u8) -> c_int,
    stats: unsafe extern "C" fn(*mut Pcap, *mut RawStat) -> c_int,
    datalink: unsafe extern "C" fn(*mut Pcap) -> c_int,
    close: unsafe extern "C" fn(*mut Pcap),
    /// `pcap_get_selectable_fd` (Unix; none on Windows): what to wait on.
    waitable: Option<unsafe extern "C" fn(*mut Pcap) -> sys::Waitable>,
    /// `pcap_setmintocopy` (Npcap and WinPcap only).
    set_min_to_copy: Option<unsafe extern "C" fn(*mut Pcap, c_int) -> c_int>,
}

/// A loaded capture library. Lives for the rest of the process.
pub struct Library {
    api: Api,
    /// The file that was loaded.
    pub path: String,
    /// `pcap_lib_version()`, e.g. "libpcap version 1.10.3 (with TPACKET_V3)" or
    /// "Npcap version 1.79, based on libpcap version 1.10.4".
    pub version: String,
    _lib: libloading::Library,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library").field("path", &self.path).field("version", &self.version).finish()
    }
}

/// The library could not be loaded: every place tried, and what to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// (candidate, why it failed).
    pub tried: Vec<(String, String)>,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "packet capture library not found (tried ")?;
        for (i, (path, why)) in self.tried.iter().enumerate() {
            write!(f, "{}{path}: {why}", if i == 0 { "" } else { "; " })?;
        }
        write!(f, "); {}", sys::INSTALL_HINT)
    }
}

impl std::error::Error for LoadError {}

type Loaded = Result<&'static Library, LoadError>;
/// One load attempt per distinct `explicit` path, kept for the process (bounded by the number
/// of configurations a process uses).
static LOADED: Mutex<Vec<(Option<String>, Loaded)>> = Mutex::new(Vec::new());

/// The `npcap.library` path to load, if any: none in a privileged process (setuid, setgid,
/// file capabilities), which says so once (warning).
///
/// A privileged program must not let whoever runs it choose code: the path may come from the
/// environment (`MW_NPCAP_LIBRARY`), from a file the environment or the command line names
/// (`MW_CONFIG`, `--config`), all of them the invoker's. So, as glibc's loader ignores
/// `LD_LIBRARY_PATH` there, the option is ignored whatever its source and the system's usual
/// places are searched (to use another libpcap there, install it where the system's loader
/// finds it).
pub(crate) fn trusted_library(explicit: Option<&str>, privileged: bool) -> Option<&str> {
    static WARNED: std::sync::Once = std::sync::Once::new();
    match explicit {
        Some(path) if privileged => {
            WARNED.call_once(|| {
                tracing::warn!(
                    library = path,
                    "npcap.library ignored: this program runs with elevated privileges (setuid, setgid or \
                     file capabilities), and a privileged program loads no code that its environment, its \
                     command line or a file they name could choose; the system's libpcap is loaded instead \
                     (install another libpcap where the system's loader finds it to use that one)"
                );
            });
            None
        }
        other => other,
    }
}

/// Loads the capture library: `explicit` (the `npcap.library` option) if given and the process
/// is not privileged (a privileged process ignores it, see `trusted_library`), otherwise the platform's usual places (see
/// `sys::library_candidates`). The result is cached.
///
/// # Errors
/// No candidate loads, or one lacks a required function.
pub fn load(explicit: Option<&str>) -> Result<&'static Library, LoadError> {
    let explicit = trusted_library(explicit, sys::privileged());
    let key = explicit.map(str::to_string);
    let mut cache = LOADED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, r)) = cache.iter().find(|(k, _)| *k == key) {
        return r.clone();
    }
    let mut tried = Vec::new();
    let mut result = None;
    for candidate in sys::library_candidates(explicit) {
        match sys::open_library(&candidate).map_err(|e| e.to_string()).and_then(|lib| Library::resolve(lib, &candidate))
        {
            Ok(l) => {
                tracing::debug!(path = %l.path, version = %l.version, "packet capture library loaded");
                result = Some(&*Box::leak(Box::new(l)));
                break;
            }
            Err(why) => tried.push((candidate, why)),
        }
    }
    let r = result.ok_or(LoadError { tried });
    cache.push((key, r.clone()));
    r
}

impl Library {
    fn resolve(lib: libloading::Library, path: &str) -> Result<Self, String> {
        /// Copies a function pointer out of the library; valid while `lib` is loaded (for the
        /// rest of the process: `Library` is leaked).
        fn sym<T: Copy>(lib: &libloading::Library, name: &str) -> Result<T, String> {
            let z = format!("{name}\0");
            // SAFETY: the caller names the libpcap function whose C signature `T` declares.
            unsafe { lib.get::<T>(z.as_bytes()).map(|s| *s).map_err(|e| format!("missing {name}: {e}")) }
        }
        fn opt<T: Copy>(lib: &libloading::Library, name: &str) -> Option<T> {
            sym(lib, name).ok()
        }
        let mut api = Api {
            lib_version: sym(&lib, "pcap_lib_version")?,
            findalldevs: sym(&lib, "pcap_findalldevs")?,
            freealldevs: sym(&lib, "pcap_freealldevs")?,
            create: sym(&lib, "pcap_create")?,
            open_offline: sym(&lib, "pcap_open_offline")?,
            set_snaplen: sym(&lib, "pcap_set_snaplen")?,
            set_promisc: sym(&lib, "pcap_set_promisc")?,
            set_timeout: sym(&lib, "pcap_set_timeout")?,
            set_buffer_size: sym(&lib, "pcap_set_buffer_size")?,
            set_immediate_mode: opt(&lib, "pcap_set_immediate_mode"),
            activate: sym(&lib, "pcap_activate")?,
            statustostr: sym(&lib, "pcap_statustostr")?,
            geterr: sym(&lib, "pcap_geterr")?,
            compile: sym(&lib, "pcap_compile")?,
            setfilter: sym(&lib, "pcap_setfilter")?,
            freecode: sym(&lib, "pcap_freecode")?,
            setdirection: opt(&lib, "pcap_setdirection"),
            setnonblock: sym(&lib, "pcap_setnonblock")?,
            dispatch: sym(&lib, "pcap_dispatch")?,
            stats: sym(&lib, "pcap_stats")?,
            datalink: sym(&lib, "pcap_datalink")?,
            close: sym(&lib, "pcap_close")?,
            waitable: None,
            set_min_to_copy: None,
        };
        // SAFETY: pcap_lib_version returns a static NUL-terminated string.
        let version = unsafe { cstr((api.lib_version)()) }.unwrap_or_default();
        // Only where the library says it is one that implements the wait (an exported name may
        // be a stub that aborts the process when called, as in Wine's wpcap).
        api.waitable = sys::WAITABLE_FN.filter(|_| sys::waitable_offered(&version)).and_then(|name| opt(&lib, name));
        // The same rule: only Npcap and WinPcap implement it.
        api.set_min_to_copy =
            sys::MIN_TO_COPY_FN.filter(|_| sys::waitable_offered(&version)).and_then(|name| opt(&lib, name));
        Ok(Self { api, path: path.to_string(), version, _lib: lib })
    }

    /// The capture devices (`pcap_findalldevs`).
    ///
    /// # Errors
    /// The library's message (on Windows typically: the Npcap driver is not running).
    pub fn devices(&self) -> Result<Vec<Device>, String> {
        let mut errbuf = [0 as c_char; ERRBUF_SIZE];
        let mut head: *mut RawIf = std::ptr::null_mut();
        // SAFETY: valid out-pointer and an errbuf of PCAP_ERRBUF_SIZE.
        if unsafe { (self.api.findalldevs)(&mut head, errbuf.as_mut_ptr()) } != 0 {
            return Err(errbuf_text(&errbuf));
        }
        let mut out = Vec::new();
        let mut cur = head;
        while let Some(d) = NonNull::new(cur) {
            // SAFETY: a node of the list pcap_findalldevs returned, freed only below.
            let d = unsafe { d.as_ref() };
            let mut ipv4 = Vec::new();
            let mut a = d.addresses;
            while let Some(addr) = NonNull::new(a) {
                // SAFETY: as above; `addr` points to a sockaddr of the family it declares.
                let addr = unsafe { addr.as_ref() };
                if let Some(ip) = unsafe { sockaddr_v4(addr.addr) } {
                    ipv4.push(ip);
                }
                a = addr.next;
            }
            out.push(Device {
                // SAFETY: NUL-terminated strings owned by the list (description may be null).
                name: unsafe { cstr(d.name) }.unwrap_or_default(),
                description: unsafe { cstr(d.description) },
                ipv4,
                loopback: d.flags & IF_LOOPBACK != 0,
                up: d.flags & IF_UP != 0,
            });
            cur = d.next;
        }
        if !head.is_null() {
            // SAFETY: the list from pcap_findalldevs, freed once; no references into it remain.
            unsafe { (self.api.freealldevs)(head) };
        }
        Ok(out)
    }
}

/// One capture device as the library lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// What to open: `eth0` on Linux, `\Device\NPF_{GUID}` on Windows.
    pub name: String,
    /// Human-readable (Windows: the adapter's name, e.g. "Intel(R) Ethernet ...").
    pub description: Option<String>,
    /// The device's IPv4 addresses.
    pub ipv4: Vec<Ipv4Addr>,
    /// It is a loopback device.
    pub loopback: bool,
    /// The interface is up.
    pub up: bool,
}

/// Reads an IPv4 address out of a `sockaddr`, if it is one.
///
/// # Safety
/// `p` is null or points to a `sockaddr` of at least `sockaddr_in`'s size when its family is
/// `AF_INET`.
unsafe fn sockaddr_v4(p: *const u8) -> Option<Ipv4Addr> {
    if p.is_null() {
        return None;
    }
    // SAFETY: per the contract; family fields are in the first two bytes.
    let family = sys::sockaddr_family(unsafe { [*p, *p.add(1)] });
    if family != 2 {
        return None;
    }
    // SAFETY: AF_INET: sockaddr_in, address at offset 4 on every platform.
    Some(unsafe { Ipv4Addr::new(*p.add(4), *p.add(5), *p.add(6), *p.add(7)) })
}

/// # Safety
/// `p` is null or a NUL-terminated string.
unsafe fn cstr(p: *const c_char) -> Option<String> {
    // SAFETY: per the contract.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

fn errbuf_text(buf: &[c_char; ERRBUF_SIZE]) -> String {
    // The library NUL-terminates; be safe if it did not.
    let bytes: Vec<u8> = buf.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Why a capture could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// No capture permission (Linux: run as root or grant `CAP_NET_RAW`; Windows: Npcap installed
    /// with admin-only access); the text says which.
    PermissionDenied(String),
    /// The named capture device does not exist.
    NoSuchDevice(String),
    /// The device exists but is down.
    InterfaceDown(String),
    /// Anything else the library reported.
    Other(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PermissionDenied(m) | Self::NoSuchDevice(m) | Self::InterfaceDown(m) | Self::Other(m) => {
                f.write_str(m)
            }
        }
    }
}

/// Options applied before activation.
#[derive(Debug, Clone, Copy)]
pub struct LiveOptions {
    /// Bytes captured per frame at most.
    pub snaplen: i32,
    /// Kernel capture buffer in bytes.
    pub buffer_size: i32,
    /// Read timeout: the longest a frame waits in a partly filled block.
    pub timeout_ms: i32,
    /// Deliver every frame at once (`pcap_set_immediate_mode`).
    pub immediate: bool,
}

/// Which frames a live capture sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Frames received and sent by this host.
    InOut = 0,
    /// Frames received only.
    In = 1,
}

/// pcap's counters (`pcap_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames the capture received (`ps_recv`).
    pub received: u32,
    /// Frames dropped because the buffer was full (`ps_drop`).
    pub dropped: u32,
    /// Frames the interface or driver dropped (`ps_ifdrop`; not every platform reports it).
    pub if_dropped: u32,
}

/// One captured frame.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    /// µs since the Unix epoch.
    pub timestamp_us: i64,
    /// Length on the wire (`data` may be shorter: snaplen).
    pub original_len: u32,
    /// The captured bytes, link-layer header included.
    pub data: &'a [u8],
}

/// An open capture (`pcap_t`), live or from a file. Closed on drop.
pub struct Handle {
    lib: &'static Library,
    p: NonNull<Pcap>,
    /// Frames whose callback panicked in [`Handle::dispatch`], all calls together.
    panicked_frames: u64,
}

// SAFETY: a pcap_t may be used from any thread as long as one thread uses it at a time, which
// `&mut self` on every operation that reads or changes it guarantees.
unsafe impl Send for Handle {}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("library", &self.lib.path).finish()
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: opened by this handle, closed exactly once.
        unsafe { (self.lib.api.close)(self.p.as_ptr()) }
    }
}

impl Handle {
    /// Opens and activates a live capture on `device`.
    ///
    /// # Errors
    /// The device is missing or down, or the process may not capture.
    pub fn open_live(lib: &'static Library, device: &str, o: LiveOptions) -> Result<Self, OpenError> {
        let name = CString::new(device).map_err(|_| OpenError::NoSuchDevice(format!("bad device name {device:?}")))?;
        let mut errbuf = [0 as c_char; ERRBUF_SIZE];
        // SAFETY: NUL-terminated name, errbuf of PCAP_ERRBUF_SIZE.
        let p = unsafe { (lib.api.create)(name.as_ptr(), errbuf.as_mut_ptr()) };
        let p = NonNull::new(p).ok_or_else(|| OpenError::Other(errbuf_text(&errbuf)))?;
        let h = Self { lib, p, panicked_frames: 0 };
        let api = &lib.api;
        // SAFETY (this block): `p` is a created, not yet activated pcap_t; setters only fail
        // once activated.
        unsafe {
            (api.set_snaplen)(p.as_ptr(), o.snaplen);
            (api.set_promisc)(p.as_ptr(), 0);
            (api.set_timeout)(p.as_ptr(), o.timeout_ms);
            (api.set_buffer_size)(p.as_ptr(), o.buffer_size);
            match api.set_immediate_mode {
                Some(f) => {
                    f(p.as_ptr(), c_int::from(o.immediate));
                }
                None if o.immediate => tracing::warn!(%device, "libpcap older than 1.5: no immediate mode"),
                None => {}
            }
        }
        // SAFETY: created pcap_t.
        let status = unsafe { (api.activate)(p.as_ptr()) };
        if status < 0 {
            let msg = format!("{}: {}", h.status_text(status), h.last_error());
            return Err(match status {
                ERROR_PERM_DENIED | ERROR_PROMISC_PERM_DENIED => OpenError::PermissionDenied(msg),
                ERROR_NO_SUCH_DEVICE => OpenError::NoSuchDevice(msg),
                ERROR_IFACE_NOT_UP => OpenError::InterfaceDown(msg),
                _ => OpenError::Other(msg),
            });
        }
        if status > 0 {
            tracing::warn!(%device, warning = %h.status_text(status), "capture activated with a warning");
        }
        Ok(h)
    }

    /// Opens a capture file (pcap, or pcapng where the library reads it).
    ///
    /// # Errors
    /// The file is missing or not a capture file (the library's message).
    pub fn open_file(lib: &'static Library, path: &std::path::Path) -> Result<Self, OpenError> {
        let name = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| OpenError::NoSuchDevice(format!("bad path {}", path.display())))?;
        let mut errbuf = [0 as c_char; ERRBUF_SIZE];
        // SAFETY: NUL-terminated path, errbuf of PCAP_ERRBUF_SIZE.
        let p = unsafe { (lib.api.open_offline)(name.as_ptr(), errbuf.as_mut_ptr()) };
        NonNull::new(p)
            .map(|p| Self { lib, p, panicked_frames: 0 })
            .ok_or_else(|| OpenError::Other(errbuf_text(&errbuf)))
    }

    fn status_text(&self, status: c_int) -> String {
        // SAFETY: pcap_statustostr returns a static (or thread-local) NUL-terminated string.
        unsafe { cstr((self.lib.api.statustostr)(status)) }.unwrap_or_else(|| status.to_string())
    }

    fn last_error(&self) -> String {
        // SAFETY: pcap_geterr returns the handle's NUL-terminated error buffer.
        unsafe { cstr((self.lib.api.geterr)(self.p.as_ptr())) }.unwrap_or_default()
    }

    /// The link type (DLT value).
    #[must_use]
    pub fn datalink(&self) -> i32 {
        // SAFETY: activated or offline handle.
        unsafe { (self.lib.api.datalink)(self.p.as_ptr()) }
    }

    /// Compiles and installs a BPF filter (optimized).
    ///
    /// # Errors
    /// The expression does not compile or the kernel refuses it.
    pub fn set_filter(&mut self, expr: &str) -> Result<(), String> {
        let e = CString::new(expr).map_err(|_| "filter contains NUL".to_string())?;
        let mut prog = BpfProgram { len: 0, insns: std::ptr::null_mut() };
        // SAFETY: handle, out-program and NUL-terminated expression valid for the call.
        if unsafe { (self.lib.api.compile)(self.p.as_ptr(), &mut prog, e.as_ptr(), 1, NETMASK_UNKNOWN) } != 0 {
            return Err(format!("compiling `{expr}`: {}", self.last_error()));
        }
        // SAFETY: a compiled program; the library copies it, so it is freed right after.
        let r = unsafe { (self.lib.api.setfilter)(self.p.as_ptr(), &mut prog) };
        unsafe { (self.lib.api.freecode)(&mut prog) };
        if r != 0 {
            return Err(format!("installing the filter: {}", self.last_error()));
        }
        Ok(())
    }

    /// # Errors
    /// Not supported on this device or library (Npcap: not at all).
    pub fn set_direction(&mut self, d: Direction) -> Result<(), String> {
        let f = self.lib.api.setdirection.ok_or("pcap_setdirection not in this library")?;
        // SAFETY: activated handle.
        if unsafe { f(self.p.as_ptr(), d as c_int) } != 0 {
            return Err(self.last_error());
        }
        Ok(())
    }

    /// Reads return at once when nothing is buffered.
    ///
    /// # Errors
    /// The library's message.
    pub fn set_nonblocking(&mut self) -> Result<(), String> {
        let mut errbuf = [0 as c_char; ERRBUF_SIZE];
        // SAFETY: activated handle, errbuf of PCAP_ERRBUF_SIZE.
        if unsafe { (self.lib.api.setnonblock)(self.p.as_ptr(), 1, errbuf.as_mut_ptr()) } != 0 {
            return Err(errbuf_text(&errbuf));
        }
        Ok(())
    }

    /// Npcap's "minimum to copy" (`pcap_setmintocopy`): bytes buffered in the driver before a
    /// read returns or the capture's event is signalled (block mode). Npcap and WinPcap only.
    ///
    /// # Errors
    /// The library does not offer it (libpcap, Wine's wpcap), or refuses the value.
    pub fn set_min_to_copy(&mut self, bytes: usize) -> Result<(), String> {
        let f = self.lib.api.set_min_to_copy.ok_or("the library has no pcap_setmintocopy")?;
        let bytes = c_int::try_from(bytes).map_err(|_| format!("{bytes} bytes is too large"))?;
        // SAFETY: activated handle.
        if unsafe { f(self.p.as_ptr(), bytes) } != 0 {
            return Err(self.last_error());
        }
        Ok(())
    }

    /// What the platform waits on for readability, when the library offers it.
    pub(crate) fn waitable(&self) -> Option<sys::Waitable> {
        // SAFETY: activated handle.
        self.lib.api.waitable.map(|f| unsafe { f(self.p.as_ptr()) })
    }

    /// Hands the frames in the library's current buffer (live) or the next ones of the file
    /// (offline), at most [`DISPATCH_MAX`], to `f`. Returns how many were handed over (0: none buffered, or end of file).
    ///
    /// # Panics
    /// Re-raises the first panic of `f`, once every frame of the batch has been handed to it
    /// (counted in [`Handle::panicked_frames`]).
    ///
    /// # Errors
    /// A read error (the library's message).
    pub fn dispatch<F: FnMut(&Packet<'_>)>(&mut self, mut f: F) -> Result<usize, String> {
        struct Ctx<'f, F> {
            f: &'f mut F,
            /// The first panic of this call, re-raised once the library has returned.
            panic: Option<Box<dyn std::any::Any + Send>>,
            panicked: u64,
        }
        unsafe extern "C" fn trampoline<F: FnMut(&Packet<'_>)>(user: *mut u8, h: *const PktHdr, data: *const u8) {
            // SAFETY: `user` is the Ctx passed to pcap_dispatch below, alive for the call; `h`
            // and `data` describe one frame of `caplen` bytes, valid during this callback.
            let (ctx, h) = unsafe { (&mut *user.cast::<Ctx<'_, F>>(), &*h) };
            let data =
                if data.is_null() { &[][..] } else { unsafe { std::slice::from_raw_parts(data, h.caplen as usize) } };
            sys::prefetch_next_frame(data);
            let pkt = Packet { timestamp_us: sys::timeval_micros(&h.ts), original_len: h.len, data };
            // A panic must not unwind into C: the first is kept and re-raised after pcap_dispatch
            // returns; the frames after it are still handed over (the library has taken them
            // from its buffer: skipping them would lose them uncounted).
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| (ctx.f)(&pkt))) {
                ctx.panicked += 1;
                if ctx.panic.is_none() {
                    ctx.panic = Some(p);
                } else {
                    // A later payload is dropped here, where a panic of its own drop cannot
                    // unwind into C either.
                    let _ = catch_unwind(AssertUnwindSafe(move || drop(p)));
                }
            }
        }
        let mut ctx = Ctx { f: &mut f, panic: None, panicked: 0 };
        // SAFETY: handle valid; the callback gets `ctx` back, which outlives the call.
        // A positive, bounded count: libpcap and Npcap read at most one buffer's worth either
        // way (the rest at the next call), but some implementations (Wine's wpcap) loop
        // `while processed < count` until no frame is pending: for -1 they read nothing, for a
        // huge count they would not return under steady traffic.
        let n = unsafe {
            (self.lib.api.dispatch)(self.p.as_ptr(), DISPATCH_MAX, trampoline::<F>, (&raw mut ctx).cast::<u8>())
        };
        self.panicked_frames += ctx.panicked;
        if let Some(p) = ctx.panic {
            std::panic::resume_unwind(p);
        }
        match n {
            n if n >= 0 => Ok(n as usize),
            -2 => Ok(0), // pcap_breakloop: nobody calls it, treat as nothing read
            _ => Err(self.last_error()),
        }
    }

    /// Frames whose callback panicked in [`Handle::dispatch`] so far (each was still followed by
    /// the rest of its batch).
    pub fn panicked_frames(&self) -> u64 {
        self.panicked_frames
    }

    /// # Errors
    /// Not available for this handle (e.g. offline).
    pub fn stats(&self) -> Result<Stats, String> {
        let mut s = RawStat::default();
        // SAFETY: handle valid, out-struct at least as large as the library's pcap_stat.
        if unsafe { (self.lib.api.stats)(self.p.as_ptr(), &mut s) } != 0 {
            return Err(self.last_error());
        }
        Ok(Stats { received: s.recv, dropped: s.drop, if_dropped: s.ifdrop })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_privileged_process_ignores_the_configured_library() {
        assert_eq!(trusted_library(Some("/tmp/evil.so"), true), None);
        assert_eq!(trusted_library(Some("/opt/libpcap.so"), false), Some("/opt/libpcap.so"));
        assert_eq!(trusted_library(None, true), None);
        // The test runner itself is not privileged.
        assert!(!sys::privileged());
    }

    #[test]
    fn a_missing_library_is_an_error_that_names_every_place_tried_and_what_to_install() {
        let e = load(Some("/nonexistent/libpcap-test.so")).unwrap_err();
        assert_eq!(e.tried.len(), 1, "{e}");
        assert_eq!(e.tried[0].0, "/nonexistent/libpcap-test.so");
        let text = e.to_string();
        assert!(text.contains("/nonexistent/libpcap-test.so") && text.contains(sys::INSTALL_HINT), "{text}");
        // Cached: the same answer without trying again.
        assert_eq!(load(Some("/nonexistent/libpcap-test.so")).unwrap_err(), e);
    }

    #[test]
    fn a_library_without_the_pcap_functions_is_refused_with_the_missing_name() {
        // libc exists everywhere this test runs and exports none of pcap's functions.
        let libc = if cfg!(target_os = "macos") { "/usr/lib/libSystem.B.dylib" } else { "libc.so.6" };
        let e = load(Some(libc)).unwrap_err();
        assert!(e.tried[0].1.contains("missing pcap_lib_version"), "{e}");
    }
}
