//! Bytes the lease balancer's agent and producers read from connections: requests,
//! statuses and frames refuse garbage with an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipewright_balance::{decode, AgentRequest, AgentResponse, ProducerFrame, Request};

fuzz_target!(|data: &[u8]| {
    let _ = decode::<AgentRequest>(data);
    let _ = decode::<AgentResponse>(data);
    let _ = decode::<ProducerFrame>(data);
    let _ = decode::<Request>(data);
});
