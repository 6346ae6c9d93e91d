#!/usr/bin/env python3
"""Cuts fuzz seeds from the real eCAL 6.1.1 captures the tests already hold
(middleware-core/tests/data/captures/, transport-udp-npcap/tests/data/) into fuzz/seeds/<target>/.
`cargo xtask fuzz` copies them, with fuzz/regressions/, into each target's corpus.

Input framing (middleware_core::fuzzing::records): control byte, u16 LE length, body.
* frames:       link byte 0 (Ethernet) + one record per captured frame (first 64 frames);
* datagrams:    one record per UDP payload to port 14002 (unfragmented frames only);
* sample:       the message of each single-datagram eCAL message (sample frame + protobuf);
* registration: one record per registration Sample (port 14000, single-datagram messages);
* ip_fragments: 3-byte head (offset in 8-byte units, u16 LE; more-fragments bit) + IP payload
                of each IPv4 fragment (first 48 fragments).
"""
import glob
import os
import struct

here = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(here)
out = os.path.join(here, "seeds")


def rec(ctl, body):
    return bytes([ctl]) + struct.pack("<H", len(body)) + body


def frames(path):
    d = open(path, "rb").read()
    assert d[:4] == b"\xd4\xc3\xb2\xa1" and struct.unpack("<I", d[20:24])[0] == 1, "classic pcap, Ethernet"
    pos = 24
    while pos + 16 <= len(d):
        incl = struct.unpack("<I", d[pos + 8:pos + 12])[0]
        yield d[pos + 16:pos + 16 + incl]
        pos += 16 + incl


def ipv4(frame):
    """(ip header fields, ip payload) of an Ethernet IPv4 frame, or None."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    ihl = (ip[0] & 15) * 4
    total = struct.unpack(">H", ip[2:4])[0]
    flags_off = struct.unpack(">H", ip[6:8])[0]
    return ip[9], bool(flags_off & 0x2000), flags_off & 0x1fff, ip[ihl:total]


def write(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


caps = sorted(glob.glob(os.path.join(repo, "middleware-core/tests/data/captures/*.pcap"))
              + glob.glob(os.path.join(repo, "transport-udp-npcap/tests/data/*.pcap")))
for cap in caps:
    name = os.path.basename(cap)[:-5]
    fs = list(frames(cap))
    write("frames", name, b"\x00" + b"".join(rec(1, f) for f in fs[:64]))
    data, regs, samples, frags = [], [], [], []
    for f in fs:
        p = ipv4(f)
        if p is None or p[0] != 17:
            continue
        proto, more, off, payload = p
        if more or off:
            frags.append(struct.pack("<H", off) + bytes([int(more)]) + payload)
            continue
        port = struct.unpack(">H", payload[2:4])[0]
        udp = payload[8:]
        if port == 14002:
            data.append(udp)
        # eCAL header: kind (u32 LE at 8) 3 = whole message; body after 24 bytes.
        if len(udp) > 24 and udp[:4] == b"ECAL" and struct.unpack("<I", udp[8:12])[0] == 3:
            msg = udp[24:]
            samples.append((port, msg))
            if port == 14000:
                # Sample frame: u16 LE name length, name (NUL-terminated), protobuf.
                n = struct.unpack("<H", msg[:2])[0]
                regs.append(msg[2 + n:])
    if data:
        write("datagrams", name, b"".join(rec(0, u) for u in data[:64]))
    # Two registration samples and two data samples (when the capture has any).
    for port in (14000, 14002):
        for i, s in enumerate([m for p, m in samples if p == port][:2]):
            write("sample", f"{name}_{port}_{i}", s)
    if regs:
        write("registration", name, b"".join(rec(i & 1, r) for i, r in enumerate(regs[:32])))
    if frags:
        write("ip_fragments", name, b"".join(rec(0, f) for f in frags[:48]))
