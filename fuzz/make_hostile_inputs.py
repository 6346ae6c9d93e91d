#!/usr/bin/env python3
"""Writes the hand-made hostile inputs under fuzz/regressions/<target>/ (inputs the issue names:
absurd declared lengths, huge fragment counts, floods of never-completed fragments, teardrop
overlaps, IP id reuse, truncated headers). Crash files found by the fuzzers go beside them.
Input framing (middleware_core::fuzzing::records): control byte, u16 LE length, body."""
import os
import struct

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "regressions")


def rec(ctl, body):
    return bytes([ctl]) + struct.pack("<H", len(body)) + body


def hdr(kind, ident, num, length):
    return b"ECAL" + bytes([5, 0, 0, 0]) + struct.pack("<IiII", kind, ident, num, length)


def write(target, name, data):
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# eCAL datagrams: info announcing 4 GiB; info announcing 2^31 fragments; a flood of fragments
# of never-completed messages from four senders; duplicate and out-of-range fragment numbers;
# a whole message whose declared length exceeds the datagram; a truncated header.
write("datagrams", "declared_4gib", rec(0, hdr(1, 7, 2, 0xFFFFFFFF)) + rec(0, hdr(2, 7, 0, 16) + b"x" * 16))
write("datagrams", "fragments_2pow31", rec(0, hdr(1, 8, 2**31, 1 << 20)) + rec(0, hdr(2, 8, 5, 8) + b"y" * 8))
write("datagrams", "flood_never_completed",
      b"".join(rec(i & 3, hdr(1, i, 4, 4000)) + rec(i & 3, hdr(2, i, 0, 1000) + b"z" * 1000) for i in range(600)))
write("datagrams", "duplicate_and_out_of_range",
      rec(0, hdr(1, 9, 2, 20)) + rec(0, hdr(2, 9, 0, 10) + b"a" * 10) * 3 + rec(0, hdr(2, 9, 7, 10) + b"b" * 10))
write("datagrams", "whole_longer_than_datagram", rec(0, hdr(3, 1, 0, 5000) + b"short"))
write("datagrams", "truncated_header", rec(0, b"ECAL\x05\x00\x00"))

# Sample frames: name length pointing past the end; zero-length name; garbage protobuf.
write("sample", "name_len_past_end", struct.pack("<H", 0xFFFF) + b"topic")
write("sample", "bad_protobuf", struct.pack("<H", 2) + b"t\x00" + b"\xff" * 32)

# Registration: a protobuf with a huge declared length-delimited field.
write("registration", "huge_field_len", rec(0, b"\x1a\xff\xff\xff\xff\x0f" + b"\x00" * 8))

# IPv4 fragments (body: offset u16 LE in 8-byte units, more-fragments byte, payload):
# teardrop (second fragment inside the first), overlapping duplicates, an offset beyond 65535,
# id reuse after completion, a flood of first fragments never completed.
def frag(ctl, off8, mf, payload):
    return rec(ctl, struct.pack("<H", off8) + bytes([mf]) + payload)

write("ip_fragments", "teardrop", frag(0, 0, 1, b"A" * 24) + frag(0, 1, 0, b"B" * 4))
write("ip_fragments", "overlapping_duplicates",
      frag(0, 0, 1, b"A" * 16) + frag(0, 1, 1, b"C" * 16) + frag(0, 0, 1, b"A" * 16) + frag(0, 3, 0, b"D" * 8))
write("ip_fragments", "offset_beyond_64k", frag(0, 0x1FFF, 0, b"E" * 100) + frag(0, 0, 1, b"F" * 8))
write("ip_fragments", "id_reuse", (frag(2, 0, 1, b"G" * 8) + frag(2, 1, 0, b"H" * 8)) * 2 + frag(2, 1, 0, b"I" * 8))
write("ip_fragments", "flood", b"".join(frag(i & 0xF7, 0, 1, bytes([i & 0xFF]) * 1400) for i in range(400)))

# Frames: truncated Ethernet, Ethernet + IPv4 header with total length 0xFFFF, VLAN tag chain.
eth = b"\x01\x00\x5e\x00\x00\x01" + b"\x02" * 6
write("frames", "truncated_ethernet", bytes([0]) + rec(0, eth[:10]))
ip = bytes([0x45, 0, 0xFF, 0xFF, 0, 1, 0x20, 0, 64, 17, 0, 0, 10, 0, 0, 1, 239, 0, 0, 1])
write("frames", "ipv4_total_len_ffff", bytes([0]) + rec(0, eth + b"\x08\x00" + ip + b"\x00" * 8))
write("frames", "vlan_chain", bytes([0]) + rec(0, eth + b"\x81\x00\x00\x01" * 40 + b"\x08\x00" + ip[:10]))
print("written under", root)

# Direct placement (first record: shape byte, message; then one record per frame: control byte
# = what happens to it, body[0] = an argument): every fragment swapped, repeated, lost,
# overlapped or flipped; a message whose 65 507-byte datagrams are cut into 45 fragments each.
msg = bytes((i * 7 + 3) & 0xFF for i in range(60000))
write("direct_placement", "mangled_small_datagrams",
      rec(5, msg[:20000]) + b"".join(rec(i % 6, bytes([i * 37 & 0xFF])) for i in range(200)))
write("direct_placement", "mangled_large_datagrams",
      rec(255, msg) + b"".join(rec((0, 0, 2, 4, 0, 5, 1, 0, 3)[i % 9], bytes([i])) for i in range(120)))
write("direct_placement", "in_order_large", rec(255, msg))
