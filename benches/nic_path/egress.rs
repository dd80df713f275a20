//! The egress cases: classify + VXLAN encap of VF frames, ours next to etherparse.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use pipewright_nic::pipeline::{egress, EgressConfig, NicStats};
use pipewright_nic::rules::Versioned;
use pipewright_nic::{Frame, FramePool};
use pipewright_stages::inline::InlineTransport;
use pipewright_stages::PipelineBuilder;

use crate::check::check_egress;
use crate::frames::{egress_table, inner_udp, vf_burst};
use crate::harness::{bursts_of, mpps, run_case, Case, Config, Runner};
use crate::ours::OursEgress;
use crate::peer::{OuterWriter, PeerEgress};
use crate::{BURST, OVERHEAD, VF};

pub fn run(cfg: &Config) {
    for frame_len in [64usize, 1400] {
        let name = format!("egress-encap-{frame_len}B");
        if !cfg.wants(&name) {
            continue;
        }
        check_egress(frame_len);
        run_case(
            cfg,
            Case {
                name: &name,
                what: &format!(
                    "classify + VXLAN encap of {frame_len}-byte IPv4/UDP frames, bursts of 32"
                ),
                unit: "Mpps",
                n: cfg.packets,
                n_what: "packets",
            },
            ours_egress(frame_len),
            peer_egress(frame_len, OuterWriter::Builder),
            vec![
                (
                    "etherparse-hdrs",
                    peer_egress(frame_len, OuterWriter::Headers),
                ),
                ("ours-inline-pipeline", inline_egress(frame_len)),
            ],
        );
    }
}

fn ours_egress(frame_len: usize) -> Runner<'static> {
    let mut ours = OursEgress::new(&Versioned::new(egress_table()));
    let mut frames = vf_burst(frame_len);
    Box::new(move |n| {
        let bursts = bursts_of(n);
        let mut bytes = 0;
        let start = Instant::now();
        for _ in 0..bursts {
            bytes += ours.burst(&mut frames, true);
        }
        let elapsed = start.elapsed();
        let packets = bursts * BURST as u64;
        assert_eq!(bytes, packets * (frame_len + OVERHEAD) as u64);
        mpps(elapsed, packets)
    })
}

fn peer_egress(frame_len: usize, writer: OuterWriter) -> Runner<'static> {
    let mut peer = PeerEgress::new(writer);
    let frames: Vec<Vec<u8>> = (0..BURST).map(|i| inner_udp(frame_len, i)).collect();
    let mut outs: Vec<Vec<u8>> = (0..BURST).map(|_| Vec::with_capacity(2048)).collect();
    Box::new(move |n| {
        let bursts = bursts_of(n);
        let mut bytes = 0;
        let start = Instant::now();
        for _ in 0..bursts {
            for (frame, out) in frames.iter().zip(outs.iter_mut()) {
                peer.encap(VF, frame, out);
                bytes += black_box(out.as_slice()).len() as u64;
            }
        }
        let elapsed = start.elapsed();
        let packets = bursts * BURST as u64;
        assert_eq!(bytes, packets * (frame_len + OVERHEAD) as u64);
        mpps(elapsed, packets)
    })
}

/// The real egress pipeline under the inline executor, bursts of 32.
fn inline_egress(frame_len: usize) -> Runner<'static> {
    let stats = NicStats::new();
    let b = PipelineBuilder::<InlineTransport>::new();
    let (input, frames) = b.input::<Frame>("from-vf");
    let config = EgressConfig {
        table: Versioned::new(egress_table()),
        pool: Arc::new(FramePool::new(128, 2048, 256)),
        stats: stats.clone(),
    };
    let ports = egress(frames, &config);
    let underlay = ports.underlay.output("underlay");
    ports.to_vf.for_each("discard", |_| {});
    let mut run = b.build().expect("valid pipeline").run_inline();
    let mut burst = vf_burst(frame_len);
    Box::new(move |n| {
        let bursts = bursts_of(n);
        let mut bytes = 0;
        let start = Instant::now();
        for _ in 0..bursts {
            run.send_all(&input, burst.drain(..));
            run.run_until_stalled().expect("egress runs");
            burst = run.take_output(&underlay);
            for f in &mut burst {
                bytes += black_box(f.data()).len() as u64;
                f.pull_front(OVERHEAD);
            }
        }
        let elapsed = start.elapsed();
        assert_eq!(stats.total(), 0, "drops: {:?}", stats.all());
        let packets = bursts * BURST as u64;
        assert_eq!(bytes, packets * (frame_len + OVERHEAD) as u64);
        mpps(elapsed, packets)
    })
}
