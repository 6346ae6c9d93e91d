//! Npcap on Windows, as pure functions: where the DLL is, how adapters are named and matched,
//! what the version string says. Compiled on every platform for tests; used by `windows.rs`.
//!
//! Facts this relies on (Npcap's documentation):
//! * Npcap installs `wpcap.dll` and `Packet.dll` in `%SystemRoot%\System32\Npcap`, which is not
//!   on the DLL search path; only its "WinPcap API-compatible mode" also puts them in System32.
//! * Adapters are named `\Device\NPF_{GUID}`; the loopback adapter (installed only with
//!   "Support loopback traffic") is `\Device\NPF_Loopback` and carries the loopback flag.
//! * `pcap_lib_version()` reads "Npcap version 1.79, based on libpcap version 1.10.4"; WinPcap
//!   4.1.3 reads "WinPcap version 4.1.3 ..." and lacks `pcap_create`, so it is refused at load.

use crate::libpcap::Device;

/// Where to load `wpcap.dll` from, in order: the explicit path, Npcap's own directory, then
/// System32 (WinPcap-compatible mode). Never the current or the application directory (DLL
/// planting).
pub(crate) fn library_candidates(explicit: Option<&str>, system_root: Option<&str>) -> Vec<String> {
    if let Some(p) = explicit {
        return vec![p.to_string()];
    }
    let root = system_root.filter(|r| !r.is_empty()).unwrap_or(r"C:\Windows").trim_end_matches('\\');
    vec![format!(r"{root}\System32\Npcap\wpcap.dll"), "wpcap.dll".to_string()]
}

/// Whether a candidate is a full path (loaded with its own directory first on the search path,
/// so that `Packet.dll` beside it is found) or a bare name (searched in System32 only).
pub(crate) fn is_full_path(candidate: &str) -> bool {
    let b = candidate.as_bytes();
    candidate.starts_with(r"\\") || (b.len() > 2 && b[0].is_ascii_alphabetic() && b[1] == b':' && b[2] == b'\\')
}

const NPF_PREFIX: &str = r"\Device\NPF_";

/// The `{GUID}` of an adapter name `\Device\NPF_{GUID}`.
pub(crate) fn adapter_guid(name: &str) -> Option<&str> {
    let rest = name
        .get(..NPF_PREFIX.len())
        .filter(|p| p.eq_ignore_ascii_case(NPF_PREFIX))
        .map(|_| &name[NPF_PREFIX.len()..])?;
    (rest.len() == 38 && rest.starts_with('{') && rest.ends_with('}')).then_some(rest)
}

/// Npcap's loopback adapter.
pub(crate) fn is_npf_loopback(name: &str) -> bool {
    name.eq_ignore_ascii_case(r"\Device\NPF_Loopback")
}

/// `spec` names the device by its full name, its GUID (with or without braces), or its
/// description (the adapter's name in the control panel), all case-insensitive.
pub(crate) fn device_matches(spec: &str, d: &Device) -> bool {
    let spec = spec.trim();
    if spec.is_empty() {
        return false;
    }
    if d.name.eq_ignore_ascii_case(spec) {
        return true;
    }
    if let Some(guid) = adapter_guid(&d.name) {
        let bare = &guid[1..guid.len() - 1];
        if guid.eq_ignore_ascii_case(spec) || bare.eq_ignore_ascii_case(spec) {
            return true;
        }
    }
    if spec.eq_ignore_ascii_case("loopback") && is_npf_loopback(&d.name) {
        return true;
    }
    d.description.as_deref().is_some_and(|desc| desc.eq_ignore_ascii_case(spec))
}

/// "Intel(R) Ethernet Connection (\Device\NPF_{...})", or the name alone.
pub(crate) fn describe_device(d: &Device) -> String {
    match d.description.as_deref().filter(|s| !s.is_empty()) {
        Some(desc) => format!("{desc} ({})", d.name),
        None => d.name.clone(),
    }
}

/// The Npcap version from `pcap_lib_version()`, if the library is Npcap.
pub(crate) fn npcap_version(lib_version: &str) -> Option<&str> {
    let rest = lib_version.strip_prefix("Npcap version ")?;
    Some(rest.split([',', ' ']).next().unwrap_or(rest))
}

/// Whether a wpcap library with this `pcap_lib_version` string implements `pcap_getevent`:
/// Npcap ("Npcap version 1.79, based on libpcap ...") and WinPcap ("WinPcap version 4.1.3 ...").
pub(crate) fn has_capture_event(lib_version: &str) -> bool {
    npcap_version(lib_version).is_some() || lib_version.starts_with("WinPcap version ")
}

/// The most kernel buffer asked of Npcap per capture handle, whatever the CPU count.
pub(crate) const MAX_KERNEL_BUFFER: usize = 1 << 30;

/// The kernel buffer to ask of Npcap for `npcap.buffer_size` = `configured` on a machine with
/// `cpus` logical processors. Npcap's driver splits a handle's buffer into one segment per
/// processor and drops a frame when the segment of the processor that handles it is full, even
/// while the others are empty (nmap/npcap#317, nmap/nmap#1968); the frames of one stream tend to
/// be handled on one processor (receive-side scaling keeps a flow on one queue). So the burst a
/// user sizes `npcap.buffer_size` for must fit in one segment: the request is `configured` times
/// the processor count, at most [`MAX_KERNEL_BUFFER`] (never below `configured`). Drivers that
/// keep one shared queue only take it as a limit.
pub(crate) fn kernel_buffer_request(configured: usize, cpus: usize) -> usize {
    configured.saturating_mul(cpus.max(1)).min(MAX_KERNEL_BUFFER).max(configured)
}

pub(crate) const NO_LOOPBACK_DEVICE: &str = "Npcap has no loopback adapter (\\Device\\NPF_Loopback): it was \
     installed without \"Support loopback traffic\"; reinstall Npcap with that option to capture local-mode \
     traffic, or use the socket transport";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_buffer_request_gives_each_processor_the_configured_size_within_bounds() {
        const MIB: usize = 1 << 20;
        assert_eq!(kernel_buffer_request(64 * MIB, 4), 256 * MIB);
        assert_eq!(kernel_buffer_request(64 * MIB, 0), 64 * MIB);
        assert_eq!(kernel_buffer_request(64 * MIB, 64), MAX_KERNEL_BUFFER);
        assert_eq!(kernel_buffer_request(2047 * MIB, 2), 2047 * MIB, "never below the configured size");
        assert_eq!(kernel_buffer_request(usize::MAX, 3), usize::MAX);
    }

    fn dev(name: &str, desc: Option<&str>) -> Device {
        Device { name: name.into(), description: desc.map(Into::into), ipv4: vec![], loopback: false, up: true }
    }

    const ETH: &str = r"\Device\NPF_{4E273621-5161-46C8-895A-48DF2E6B0E27}";

    #[test]
    fn only_npcap_and_winpcap_are_trusted_with_the_capture_event() {
        assert!(has_capture_event("Npcap version 1.79, based on libpcap version 1.10.4"));
        assert!(has_capture_event("WinPcap version 4.1.3 (packet.dll version 4.1.0.2980), based on libpcap version 1.0 branch 1_0_rel0b (20091008)"));
        // Wine's wpcap reports the host's libpcap and exports pcap_getevent as an aborting stub.
        assert!(!has_capture_event("libpcap version 1.10.3 (with TPACKET_V3)"));
        assert!(!has_capture_event(""));
    }

    #[test]
    fn npcap_dir_first_then_system32_and_never_a_relative_directory() {
        let c = library_candidates(None, Some(r"D:\Win\"));
        assert_eq!(c, vec![r"D:\Win\System32\Npcap\wpcap.dll".to_string(), "wpcap.dll".to_string()]);
        assert!(is_full_path(&c[0]) && !is_full_path(&c[1]));
        assert_eq!(library_candidates(None, None)[0], r"C:\Windows\System32\Npcap\wpcap.dll");
        assert_eq!(library_candidates(None, Some(""))[0], r"C:\Windows\System32\Npcap\wpcap.dll");
        assert_eq!(
            library_candidates(Some(r"E:\npcap-sdk\wpcap.dll"), Some(r"C:\Windows")),
            vec![r"E:\npcap-sdk\wpcap.dll"]
        );
        assert!(is_full_path(r"\\server\share\wpcap.dll"));
        assert!(!is_full_path(r"Npcap\wpcap.dll") && !is_full_path("C:wpcap.dll"));
    }

    #[test]
    fn adapters_match_by_name_guid_or_description() {
        let d = dev(ETH, Some("Intel(R) Ethernet Connection I219-LM"));
        assert_eq!(adapter_guid(ETH), Some("{4E273621-5161-46C8-895A-48DF2E6B0E27}"));
        for spec in [
            ETH,
            &ETH.to_ascii_lowercase(),
            "{4E273621-5161-46C8-895A-48DF2E6B0E27}",
            "4e273621-5161-46c8-895a-48df2e6b0e27",
            "intel(r) ethernet connection i219-lm",
        ] {
            assert!(device_matches(spec, &d), "{spec}");
        }
        for spec in ["", "Intel", "4E273621", r"\Device\NPF_Loopback", "loopback"] {
            assert!(!device_matches(spec, &d), "{spec}");
        }
        let lo = dev(r"\Device\NPF_Loopback", Some("Adapter for loopback traffic capture"));
        assert!(is_npf_loopback(&lo.name) && device_matches("loopback", &lo) && device_matches("Loopback", &lo));
        assert_eq!(adapter_guid(&lo.name), None);
        assert_eq!(adapter_guid(r"\Device\NPF_{short}"), None);
        assert_eq!(adapter_guid("eth0"), None);
    }

    #[test]
    fn devices_are_described_by_their_adapter_name() {
        assert_eq!(describe_device(&dev(ETH, Some("Wi-Fi"))), format!("Wi-Fi ({ETH})"));
        assert_eq!(describe_device(&dev(ETH, Some(""))), ETH);
        assert_eq!(describe_device(&dev(ETH, None)), ETH);
    }

    #[test]
    fn the_npcap_version_is_read_from_the_library_string() {
        assert_eq!(npcap_version("Npcap version 1.79, based on libpcap version 1.10.4"), Some("1.79"));
        assert_eq!(npcap_version("WinPcap version 4.1.3 (packet.dll version 4.1.0.2980)"), None);
        assert_eq!(npcap_version("libpcap version 1.10.3 (with TPACKET_V3)"), None);
    }

    #[test]
    fn the_missing_loopback_adapter_says_how_to_get_it() {
        assert!(NO_LOOPBACK_DEVICE.contains("Support loopback traffic") && NO_LOOPBACK_DEVICE.contains("socket"));
    }
}
