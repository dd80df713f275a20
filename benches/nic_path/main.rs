//! The `nic_path` suite: the software NIC's per-packet work (classify + VXLAN encap,
//! outer parse + match + decap + checksum verify, TSO + encap) next to the same work
//! done the straightforward way with `etherparse`, measured in one process run.
//!
//! Run with `cargo bench --bench nic_path`; `PIPEWRIGHT_BENCH_QUICK=1` runs every case
//! with fewer packets (the whole suite in well under a minute on two cores).
//! For profiling (e.g. under `perf record`): `PIPEWRIGHT_BENCH_CASE=<text>` runs only the
//! cases whose name contains `<text>`, `PIPEWRIGHT_BENCH_ONLY=ours|peer` runs one side
//! only (and prints no RESULT line). By default everything runs.
//!
//! Each case prints a header and per-round lines to stderr, and one line to stdout:
//!
//! ```text
//! RESULT suite=nic_path case=<case> ours=<n> peer=etherparse:<n> unit=<unit> better=higher ratio=<ours/peer>
//! ```
//!
//! # Methodology
//!
//! - Single thread (the bench's main thread, not pinned), everything in memory: a burst
//!   of 32 frames is built once (distinct flows: source port, destination address and
//!   IP id differ), then pushed through the path over and over. Packets per second
//!   count frames in (= frames out); Gbit/s counts inner TCP payload bits.
//! - **Ours** is the code path of the pipeline stages, called directly on a burst: the
//!   stage structs are private to `pipewright-nic`, so the bench repeats their few lines
//!   over the public building blocks. Egress = the `egress-classify` key extraction
//!   (wire views; `egress_key` itself is crate-private) + `EgressTable::classify` (one
//!   table version per burst through a `Versioned` reader, rule counters bumped, the
//!   template `Arc` cloned as the stage does) + `complete_partial` + `flow_hash` +
//!   `EncapTemplate::encap` in the frame's headroom. Ingress = `parse_outer` +
//!   `IngressTable::classify` + counters + `strip_outer` + `verify_l3l4`. TSO = classify
//!   the super-frame, `offload::segment` into frames from a `FramePool`, encap each
//!   segment; the segments go back to the pool (`give_back`) once "sent".
//!   Between bursts the bench undoes encap/decap by moving the frame start back
//!   (`pull_front` / `try_push_front`, two integer updates): the bytes are untouched,
//!   so the next pass sees the original frame again, as a fresh receive would.
//! - **Peer** (`etherparse` 0.19), the same decisions and the same output bytes:
//!   egress parses the inner frame with `SlicedPacket::from_ethernet`, checks the VF's
//!   identity (MAC, source IP, no VLAN), finds the rule in a `HashMap` keyed by
//!   (VF, destination /24) and bumps its counters, hashes the same flow fields for the
//!   UDP source port, then builds the outer packet with
//!   `PacketBuilder::ethernet2(..).ip(Ipv4 with the same id/DF/TTL).udp(..)`, writing
//!   VXLAN header + inner frame as the UDP payload into one reused `Vec` per burst slot
//!   (the builder wants the payload as one slice, so VXLAN header + inner frame are
//!   first gathered in a reused scratch `Vec`). Ingress: `SlicedPacket` of the outer
//!   packet, IPv4 header checksum check, UDP checksum check when non-zero, port check,
//!   VXLAN header by hand, `SlicedPacket` of the inner frame, `HashMap` lookup by
//!   (VNI, outer destination) + source check + tenant (inner MAC) check, counters,
//!   inner IPv4 header and UDP/TCP checksum verification with etherparse's
//!   `calc_header_checksum` / `calc_checksum_ipv4*`; the inner frame is returned as a
//!   sub-slice (no copy), as ours strips in place. TSO: `SlicedPacket` of the
//!   super-frame, one lookup, then per 1448-byte chunk an inner Ethernet/IPv4/TCP packet
//!   by `PacketBuilder` (IP id and TCP sequence advancing, FIN/PSH only on the last,
//!   CWR only on the first, TCP and IP checksums computed) and the outer as above.
//! - `PacketBuilder` always computes the outer UDP checksum (over the whole inner
//!   frame); our VXLAN template sends 0 (allowed for VXLAN over IPv4, RFC 7348, and
//!   Linux's default). That is part of the "straightforward way" and stays in the
//!   RESULT, but each egress/TSO case also runs an informational `etherparse-hdrs`
//!   peer that writes the outer headers with etherparse's header structs
//!   (`Ethernet2Header`/`Ipv4Header`/`UdpHeader::write`, UDP checksum 0, the inner
//!   frame copied once), i.e. exactly our output bytes, so the ratio can be read
//!   without the checksum. Every case also runs an informational
//!   `ours-inline-pipeline`: the real `pipeline::egress` / `pipeline::ingress` stages
//!   under the inline executor, fed bursts of 32 with `send_all` + `run_until_stalled`
//!   + `take_output` (what the stage structs plus the executor's queues cost).
//! - Before timing, every case checks that ours and the peer produce equivalent
//!   packets: both outputs decode with our `parse_outer` to the same VNI and the same
//!   inner bytes, and are byte-identical apart from the outer UDP checksum (which
//!   `parse_outer` verifies when set). Every timed run asserts the number of output
//!   bytes and that nothing was dropped, and passes outputs through `black_box`.
//! - Each side's per-packet (peer) or per-burst (ours) entry point is
//!   `#[inline(never)]`, so its code does not depend on how the harness closure around
//!   it is compiled: with the peer inlined into the loop, unrelated edits to this file
//!   moved etherparse's numbers by up to 25 % (stores into the on-stack `SlicedPacket`
//!   that stall or not depending on the caller's frame). The call costs ~1 ns.
//! - Per case: one warm-up run per side, then `rounds` rounds in which the sides run
//!   in rotating order; the reported number is the median per side. Input preparation
//!   that a real NIC would not do per packet (cloning TSO super-frames, which `segment`
//!   consumes) is outside the timed region, per burst, for both sides alike: both read
//!   the same freshly written super-frames. An allocation made after them and freed
//!   after the timed region keeps the heap from being trimmed when the super-frames
//!   are freed inside it (without it, `brk`/page-fault churn cost both sides 20-30 %).
//!
//! # Layout
//!
//! `frames` builds the tables and input frames, `ours` repeats the stages' logic over
//! the public building blocks, `peer` is the etherparse NIC, `check` the equivalence
//! checks and `harness` the configuration and the rotating-rounds runner; the cases
//! (their runners and RESULT lines) live in `egress`, `ingress` and `tso`.
// A benchmark binary: `pub` marks what its modules share; nothing is exported.
#![allow(unreachable_pub)]

mod check;
#[path = "../common/mod.rs"]
mod common;
mod egress;
mod frames;
mod harness;
mod ingress;
mod ours;
mod peer;
mod tso;

use std::net::Ipv4Addr;
use std::time::Instant;

use harness::Config;

/// Frames per burst, on every side.
const BURST: usize = 32;

/// The sending VF, its MAC and address.
const VF: u16 = 1;
const VF_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const VF_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The receiving VF (on the far host) and its MAC: the inner destination MAC.
const RX_VF: u16 = 2;
const RX_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
/// The tunnel.
const VNI: u32 = 100;
const VTEP_SRC: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
const VTEP_DST: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
const VTEP_SRC_MAC: [u8; 6] = [2, 0xaa, 0, 0, 0, 1];
const VTEP_DST_MAC: [u8; 6] = [2, 0xaa, 0, 0, 0, 2];
const VXLAN_PORT: u16 = 4789;
const TTL: u8 = 64;
/// Underlay IP MTU: 1600 so that a full 1514-byte inner frame (MSS 1448 with TCP
/// timestamps) fits once encapsulated (1550 bytes of outer IP).
const UNDERLAY_MTU: usize = 1600;
/// Outer Ethernet + IPv4 + UDP + VXLAN.
const OVERHEAD: usize = 14 + 20 + 8 + 8;
/// TSO: segment size and segments per super-frame (45 x 1448 = 65 160 payload bytes,
/// a 65 212-byte IP packet: the largest whole number of segments under 64 KiB).
const MSS: usize = 1448;
const TSO_SEGMENTS: usize = 45;
/// Inner Ethernet + IPv4 + TCP with the timestamp option.
const TSO_HDR: usize = 14 + 20 + 32;

fn main() {
    let cfg = Config::from_env();
    let suite_start = Instant::now();
    eprintln!("== nic_path: loadavg at start {}", common::loadavg());

    egress::run(&cfg);
    ingress::run(&cfg);
    tso::run(&cfg);
    eprintln!(
        "== nic_path: done in {:.1} s, loadavg at end {}",
        suite_start.elapsed().as_secs_f64(),
        common::loadavg()
    );
}
