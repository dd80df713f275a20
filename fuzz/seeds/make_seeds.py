#!/usr/bin/env python3
"""Writes the seed inputs of the NIC fuzz targets: valid tunnelled frames (VXLAN and
Geneve over IPv4 and IPv6, inner UDP and TCP with correct checksums) and guest
super-frames, so that libFuzzer starts past the checksum checks. Run from this
directory: python3 make_seeds.py"""
import struct

def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF

def eth(dst, src, ethertype, payload):
    return dst + src + struct.pack("!H", ethertype) + payload

def ipv4(src, dst, proto, payload):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, 64, proto, 0, src, dst)
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload

def ipv6(src, dst, proto, payload):
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), proto, 64, src, dst) + payload

def l4(proto, src, dst, payload, v6, sport, dport):
    if proto == 17:
        seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        ck_at = 6
    else:
        seg = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, 0x18, 65535, 0, 0) + payload
        ck_at = 16
    if v6:
        pseudo = src + dst + struct.pack("!IxxxB", len(seg), proto)
    else:
        pseudo = src + dst + struct.pack("!xBH", proto, len(seg))
    c = csum(pseudo + seg) or 0xFFFF
    return seg[:ck_at] + struct.pack("!H", c) + seg[ck_at + 2:]

MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
A4, B4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
A6 = bytes.fromhex("fd000000000000000000000000000001")
B6 = bytes.fromhex("fd000000000000000000000000000002")

def inner(proto):
    return eth(MAC_B, MAC_A, 0x0800, ipv4(A4, B4, proto, l4(proto, A4, B4, b"hello, tunnel" * 3, False, 40000, 7)))

def outer(tunnel, v6, proto):
    frame = inner(proto)
    if tunnel == "vxlan":
        hdr, port = struct.pack("!BxxxI", 0x08, 100 << 8), 4789
    else:
        hdr, port = struct.pack("!BBHI", 0, 0, 0x6558, 100 << 8), 6081
    payload = hdr + frame
    if v6:
        udp = l4(17, A6, B6, payload, True, 50000, port)
        return eth(MAC_B, MAC_A, 0x86DD, ipv6(A6, B6, 17, udp))
    udp = l4(17, A4, B4, payload, False, 50000, port)
    return eth(MAC_B, MAC_A, 0x0800, ipv4(A4, B4, 17, udp))

for tunnel in ("vxlan", "geneve"):
    for v6 in (False, True):
        for proto in (17, 6):
            name = "%s-%s-%s" % (tunnel, "v6" if v6 else "v4", "udp" if proto == 17 else "tcp")
            open("nic_decap/" + name, "wb").write(outer(tunnel, v6, proto))

# nic_offload: [kind, size (le16), csum start (le16), csum offset (le16)] + frame.
big = b"x" * 4000
tcp4 = eth(MAC_B, MAC_A, 0x0800, ipv4(A4, B4, 6, l4(6, A4, B4, big, False, 40000, 80)))
udp4 = eth(MAC_B, MAC_A, 0x0800, ipv4(A4, B4, 17, l4(17, A4, B4, big, False, 40000, 53)))
tcp6 = eth(MAC_B, MAC_A, 0x86DD, ipv6(A6, B6, 6, l4(6, A6, B6, big, True, 40000, 80)))
for name, kind, frame, start, off in (
    ("tso4", 1 | 4, tcp4, 34, 16),
    ("tso6", 2 | 4, tcp6, 54, 16),
    ("uso4", 3 | 4, udp4, 34, 6),
    ("plain", 0, tcp4, 0, 0),
):
    head = struct.pack("<BHHH", kind, 1400, start, off)
    open("nic_offload/" + name, "wb").write(head + frame)
