//! The TSO case: segment 64 KB super-frames and encapsulate every segment, ours next to
//! etherparse.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipewright_nic::pipeline::{egress, EgressConfig, NicStats};
use pipewright_nic::rules::Versioned;
use pipewright_nic::{Frame, FramePool};
use pipewright_stages::inline::InlineTransport;
use pipewright_stages::PipelineBuilder;

use crate::check::check_tso;
use crate::frames::{egress_table, tso_superframe};
use crate::harness::{bursts_of, gbps, run_case, Case, Config, Runner};
use crate::ours::OursTso;
use crate::peer::{OuterWriter, PeerTso};
use crate::{BURST, MSS, OVERHEAD, TSO_HDR, TSO_SEGMENTS, VF};

pub fn run(cfg: &Config) {
    if cfg.wants("tso-64KB") {
        check_tso();
        run_case(
            cfg,
            Case {
                name: "tso-64KB",
                what: "TSO of 65 160-byte TCP/IPv4 super-frames into 45 x 1448-byte segments + VXLAN encap, bursts of 32 super-frames",
                unit: "Gbit/s",
                n: cfg.superframes,
                n_what: "super-frames",
            },
            ours_tso(),
            peer_tso(OuterWriter::Builder),
            vec![
                ("etherparse-hdrs", peer_tso(OuterWriter::Headers)),
                ("ours-inline-pipeline", inline_tso()),
            ],
        );
    }
}

/// Bytes out of one super-frame: 45 segments of 1514 bytes, encapsulated.
const TSO_OUT_BYTES: u64 = (TSO_SEGMENTS * (TSO_HDR + MSS + OVERHEAD)) as u64;
/// Inner TCP payload bytes of one super-frame.
const TSO_PAYLOAD: u64 = (TSO_SEGMENTS * MSS) as u64;

fn superframes() -> Vec<Frame> {
    (0..BURST).map(tso_superframe).collect()
}

/// A fresh copy of the super-frames for one timed burst (`segment` consumes them),
/// plus a fence: an allocation made after them and freed only after the timed region,
/// so that freeing the super-frames inside it (ours frees each in `segment`, the peer
/// drops its burst) cannot shrink the heap (glibc trims a top chunk over 128 KiB) and
/// the timed region measures packet work, not `brk`/page-fault churn.
fn prepare(originals: &[Frame]) -> (Vec<Frame>, Vec<u8>) {
    let burst = originals.to_vec();
    let fence = vec![1u8; 64 * 1024];
    (burst, black_box(fence))
}

fn ours_tso() -> Runner<'static> {
    let mut ours = OursTso::new(&Versioned::new(egress_table()));
    let originals = superframes();
    Box::new(move |n| {
        let bursts = bursts_of(n);
        let (mut bytes, mut busy) = (0, Duration::ZERO);
        for _ in 0..bursts {
            let (mut burst, fence) = prepare(&originals); // the VF writes them: untimed
            let start = Instant::now();
            for frame in burst.drain(..) {
                bytes += ours.one(frame, |d| {
                    black_box(d);
                });
            }
            drop(burst);
            busy += start.elapsed();
            drop(fence);
        }
        let frames = bursts * BURST as u64;
        assert_eq!(bytes, frames * TSO_OUT_BYTES);
        gbps(busy, frames * TSO_PAYLOAD)
    })
}

fn peer_tso(writer: OuterWriter) -> Runner<'static> {
    let mut peer = PeerTso::new(writer);
    let originals = superframes();
    Box::new(move |n| {
        let bursts = bursts_of(n);
        let (mut bytes, mut busy) = (0, Duration::ZERO);
        for _ in 0..bursts {
            let (burst, fence) = prepare(&originals); // the same preparation as ours
            let start = Instant::now();
            for frame in &burst {
                bytes += peer.one(VF, frame.data(), |d| {
                    black_box(d);
                });
            }
            drop(burst);
            busy += start.elapsed();
            drop(fence);
        }
        let frames = bursts * BURST as u64;
        assert_eq!(bytes, frames * TSO_OUT_BYTES);
        gbps(busy, frames * TSO_PAYLOAD)
    })
}

/// The real egress pipeline (classify, offload = segment, encap) under the inline
/// executor; the segments go back to the pool after each burst.
fn inline_tso() -> Runner<'static> {
    let stats = NicStats::new();
    let b = PipelineBuilder::<InlineTransport>::new();
    let (input, frames) = b.input::<Frame>("from-vf");
    let pool = Arc::new(FramePool::new(128, 2048, 2048));
    let config = EgressConfig {
        table: Versioned::new(egress_table()),
        pool: pool.clone(),
        stats: stats.clone(),
    };
    let ports = egress(frames, &config);
    let underlay = ports.underlay.output("underlay");
    ports.to_vf.for_each("discard", |_| {});
    let mut run = b.build().expect("valid pipeline").run_inline();
    let originals = superframes();
    Box::new(move |n| {
        let bursts = bursts_of(n);
        let (mut bytes, mut busy) = (0, Duration::ZERO);
        for _ in 0..bursts {
            let (burst, fence) = prepare(&originals);
            let start = Instant::now();
            run.send_all(&input, burst);
            run.run_until_stalled().expect("egress runs");
            let out = run.take_output(&underlay);
            for f in &out {
                bytes += black_box(f.data()).len() as u64;
            }
            pool.give_back(out);
            busy += start.elapsed();
            drop(fence);
        }
        assert_eq!(stats.total(), 0, "drops: {:?}", stats.all());
        let frames = bursts * BURST as u64;
        assert_eq!(bytes, frames * TSO_OUT_BYTES);
        gbps(busy, frames * TSO_PAYLOAD)
    })
}
