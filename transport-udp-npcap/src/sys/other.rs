use std::net::Ipv4Addr;

/// Linux and macOS loop joined multicast back to capture on their own; nothing to kick.
pub(crate) fn cold_start(_groups: &[Ipv4Addr], _interface: Option<Ipv4Addr>) {}
