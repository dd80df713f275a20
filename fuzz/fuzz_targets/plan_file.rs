//! Plan files (TOML written by operators): anything that is not a valid plan is a
//! `PlanError`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipewright_runtime::Plan;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Plan::from_toml(text);
    }
});
