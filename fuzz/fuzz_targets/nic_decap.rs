//! Frames from the underlay: the outer headers (Ethernet, IPv4/IPv6, UDP, VXLAN,
//! Geneve, PWT) are parsed and checked, the inner frame is cut out and its L3/L4
//! headers and checksums verified, as the ingress path does. Nothing may panic, and
//! the inner frame lies inside the outer one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipewright_nic::offload::{verify_l3l4, Headers};
use pipewright_nic::tunnel::{parse_outer, strip_outer, DecapConfig};
use pipewright_nic::Frame;

fuzz_target!(|data: &[u8]| {
    let config = DecapConfig::default();
    let Ok(outer) = parse_outer(data, &config) else {
        return;
    };
    assert!(outer.inner_off + outer.inner_len <= data.len());
    let mut frame = Frame::from_bytes(data);
    strip_outer(&mut frame, &outer);
    assert_eq!(frame.len(), outer.inner_len);
    let _ = verify_l3l4(frame.data());
    let _ = Headers::parse(frame.data());
});
