//! The ingress case: outer parse + match + decap + inner checksum verify, ours next to
//! etherparse.

use std::hint::black_box;
use std::time::Instant;

use pipewright_nic::pipeline::{ingress, NicStats};
use pipewright_nic::rules::Versioned;
use pipewright_nic::tunnel::DecapConfig;
use pipewright_nic::Frame;
use pipewright_stages::inline::InlineTransport;
use pipewright_stages::PipelineBuilder;

use crate::check::check_ingress;
use crate::frames::{ingress_table, underlay_burst};
use crate::harness::{bursts_of, mpps, run_case, Case, Config, Runner};
use crate::ours::OursIngress;
use crate::peer::PeerIngress;
use crate::{BURST, OVERHEAD};

pub fn run(cfg: &Config) {
    if cfg.wants("ingress-decap-64B") {
        check_ingress(64);
        run_case(
            cfg,
            Case {
                name: "ingress-decap-64B",
                what: "outer parse + match + strip + inner checksum verify of VXLAN/IPv4 packets with 64-byte inner frames, bursts of 32",
                unit: "Mpps",
                n: cfg.packets,
                n_what: "packets",
            },
            ours_ingress(64),
            peer_ingress(64),
            vec![("ours-inline-pipeline", inline_ingress(64))],
        );
    }
}

fn ours_ingress(frame_len: usize) -> Runner<'static> {
    let mut ours = OursIngress::new(&Versioned::new(ingress_table()));
    let mut frames = underlay_burst(frame_len);
    Box::new(move |n| {
        let bursts = bursts_of(n);
        let mut bytes = 0;
        let start = Instant::now();
        for _ in 0..bursts {
            bytes += ours.burst(&mut frames, true);
        }
        let elapsed = start.elapsed();
        let packets = bursts * BURST as u64;
        assert_eq!(bytes, packets * frame_len as u64);
        mpps(elapsed, packets)
    })
}

fn peer_ingress(frame_len: usize) -> Runner<'static> {
    let mut peer = PeerIngress::new();
    let frames: Vec<Vec<u8>> = underlay_burst(frame_len)
        .iter()
        .map(|f| f.data().to_vec())
        .collect();
    Box::new(move |n| {
        let bursts = bursts_of(n);
        let mut bytes = 0;
        let start = Instant::now();
        for _ in 0..bursts {
            for frame in &frames {
                let (vf, off, len) = peer.decap(frame).expect("delivered");
                black_box((vf, &frame[off..off + len]));
                bytes += len as u64;
            }
        }
        let elapsed = start.elapsed();
        let packets = bursts * BURST as u64;
        assert_eq!(bytes, packets * frame_len as u64);
        mpps(elapsed, packets)
    })
}

/// The real ingress pipeline under the inline executor, bursts of 32.
fn inline_ingress(frame_len: usize) -> Runner<'static> {
    let stats = NicStats::new();
    let b = PipelineBuilder::<InlineTransport>::new();
    let (input, frames) = b.input::<Frame>("from-underlay");
    let table = Versioned::new(ingress_table());
    let delivered = ingress(frames, &table, DecapConfig::default(), &stats).output("to-vf");
    let mut run = b.build().expect("valid pipeline").run_inline();
    let mut burst = underlay_burst(frame_len);
    Box::new(move |n| {
        let bursts = bursts_of(n);
        let mut bytes = 0;
        let start = Instant::now();
        for _ in 0..bursts {
            run.send_all(&input, burst.drain(..));
            run.run_until_stalled().expect("ingress runs");
            burst = run.take_output(&delivered);
            for f in &mut burst {
                bytes += black_box(f.data()).len() as u64;
                f.try_push_front(OVERHEAD).expect("headroom");
            }
        }
        let elapsed = start.elapsed();
        assert_eq!(stats.total(), 0, "drops: {:?}", stats.all());
        let packets = bursts * BURST as u64;
        assert_eq!(bytes, packets * frame_len as u64);
        mpps(elapsed, packets)
    })
}
