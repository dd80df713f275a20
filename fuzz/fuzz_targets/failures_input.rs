//! What the failure analytics read: event lines from producers (JSON, timestamps in
//! several forms) and the records of its own append-only log after a crash. Nothing
//! may panic, and a decoded log prefix lies within the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipewright_failures::{decode_log, parse_line, Limits};

fuzz_target!(|data: &[u8]| {
    let _ = parse_line(data, &Limits::default(), 1_700_000_000);
    let (_, used) = decode_log(data, 0);
    assert!(used <= data.len());
});
