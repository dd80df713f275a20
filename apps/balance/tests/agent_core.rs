//! The agent's lease state machine without sockets: every renewal, release and report
//! counted once, whatever a consumer (buggy, retrying or hostile) sends.

use std::net::SocketAddr;

use pipewright_balance::{
    AgentConfig, AgentCore, ClusterKey, ConsumerId, ConsumerReport, Indicators, LeaseClaims,
    LeaseRequest, LeaseToken, ProducerId, ProducerReport, ProducerStatus, Refusal,
};

const T0: u64 = 1_800_000_000_000;

fn key() -> ClusterKey {
    ClusterKey::from_passphrase("core tests")
}

fn status(id: u64, leaving: bool) -> ProducerStatus {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    ProducerStatus {
        id: ProducerId(id),
        addr,
        gossip: addr,
        report: ProducerReport {
            utilisation: 0.3,
            rps: 100.0,
            ..Default::default()
        },
        indicators: Indicators::default(),
        shed_total: 0,
        last_verdict: None,
        leaving,
    }
}

/// An agent (no blackout: new producers get leases at once) with producers `ids`.
fn agent(now: u64, ids: &[u64]) -> AgentCore {
    let mut config = AgentConfig {
        rebalance_leases: false,
        ..AgentConfig::default()
    };
    config.weights.blackout = std::time::Duration::ZERO;
    let mut core = AgentCore::new(config, key(), now, &[]);
    for &id in ids {
        core.producer(now, &status(id, false));
    }
    core
}

fn want(consumer: u64, n: u16) -> LeaseRequest {
    LeaseRequest {
        consumer: ConsumerId(consumer),
        want: n,
        ..Default::default()
    }
}

fn renew(consumer: u64, tokens: Vec<LeaseToken>) -> LeaseRequest {
    LeaseRequest {
        consumer: ConsumerId(consumer),
        renew: tokens,
        ..Default::default()
    }
}

/// Leases the agent counts on `producer`.
fn held(core: &mut AgentCore, now: u64, producer: u64) -> u64 {
    core.status(now, 0, 0)
        .producers
        .iter()
        .find(|p| p.weight.producer == ProducerId(producer))
        .map_or(0, |p| p.weight.active_leases)
}

#[test]
fn a_token_sent_many_times_in_one_request_is_renewed_once() {
    let mut core = agent(T0, &[1]);
    let token = core.lease(T0, &want(7, 1)).granted[0].token;
    assert_eq!(held(&mut core, T0, 1), 1);
    let r = core.lease(T0 + 10, &renew(7, vec![token; 600]));
    assert_eq!(r.renewed.len(), 1);
    assert_eq!(r.refused.len(), 599);
    assert!(r.refused.iter().all(|(_, why)| *why == Refusal::Expired));
    assert_eq!(held(&mut core, T0 + 10, 1), 1, "duplicates added leases");
    assert_eq!(core.status(T0 + 10, 0, 0).active_leases, 1);
}

#[test]
fn a_renewal_sent_again_after_a_lost_answer_is_refused_and_adds_nothing() {
    let mut core = agent(T0, &[1]);
    let token = core.lease(T0, &want(7, 1)).granted[0].token;
    let first = core.lease(T0 + 10, &renew(7, vec![token]));
    assert_eq!(first.renewed.len(), 1);
    // The answer was lost: the consumer sends the old token again.
    let again = core.lease(T0 + 20, &renew(7, vec![token]));
    assert!(again.renewed.is_empty());
    assert_eq!(again.refused, vec![(token, Refusal::Expired)]);
    assert_eq!(held(&mut core, T0 + 20, 1), 1);
    // The token it did get still renews.
    let new = first.renewed[0].token;
    assert_eq!(core.lease(T0 + 30, &renew(7, vec![new])).renewed.len(), 1);
    assert_eq!(held(&mut core, T0 + 30, 1), 1);
}

#[test]
fn a_released_lease_cannot_be_renewed() {
    let mut core = agent(T0, &[1]);
    let token = core.lease(T0, &want(7, 1)).granted[0].token;
    let release = LeaseRequest {
        consumer: ConsumerId(7),
        release: vec![token],
        ..Default::default()
    };
    core.lease(T0 + 5, &release);
    assert_eq!(held(&mut core, T0 + 5, 1), 0);
    let r = core.lease(T0 + 10, &renew(7, vec![token]));
    assert_eq!(r.refused, vec![(token, Refusal::Expired)]);
    assert_eq!(held(&mut core, T0 + 10, 1), 0);
}

#[test]
fn a_lease_from_before_a_restart_is_adopted_once() {
    let mut before = agent(T0, &[1]);
    let token = before.lease(T0, &want(7, 1)).granted[0].token;
    // The agent restarts a second later with the same registry.
    let mut after = agent(T0 + 1_000, &[1]);
    assert_eq!(held(&mut after, T0 + 1_000, 1), 0);
    let r = after.lease(T0 + 1_010, &renew(7, vec![token, token]));
    assert_eq!(r.renewed.len(), 1);
    assert_eq!(held(&mut after, T0 + 1_010, 1), 1);
    let again = after.lease(T0 + 1_020, &renew(7, vec![token]));
    assert!(again.renewed.is_empty());
    assert_eq!(held(&mut after, T0 + 1_020, 1), 1);
}

#[test]
fn a_token_carries_one_report_even_after_it_was_renewed() {
    let mut core = agent(T0, &[1]);
    let token = core.lease(T0, &want(7, 1)).granted[0].token;
    let report = ConsumerReport {
        requests: 10,
        ..Default::default()
    };
    let with_report = |t: LeaseToken, renew: Vec<LeaseToken>| LeaseRequest {
        consumer: ConsumerId(7),
        renew,
        reports: vec![(t, report)],
        ..Default::default()
    };
    let first = core.lease(T0 + 10, &with_report(token, vec![token]));
    assert_eq!(first.reports_accepted, 1);
    let second = core.lease(T0 + 20, &with_report(token, vec![]));
    assert_eq!(
        (second.reports_accepted, second.reports_rejected),
        (0, 1),
        "the same token reported twice"
    );
    // The renewed token carries its own.
    let new = first.renewed[0].token;
    assert_eq!(
        core.lease(T0 + 30, &with_report(new, vec![]))
            .reports_accepted,
        1
    );
}

#[test]
fn a_producer_that_leaves_takes_its_leases_with_it() {
    let mut core = agent(T0, &[1]);
    let token = core.lease(T0, &want(7, 1)).granted[0].token;
    core.producer(T0 + 100, &status(1, true));
    // Back a moment later (a quick restart).
    core.producer(T0 + 200, &status(1, false));
    assert_eq!(core.status(T0 + 200, 0, 0).active_leases, 0);
    let r = core.lease(T0 + 300, &renew(7, vec![token]));
    assert_eq!(r.refused, vec![(token, Refusal::Expired)]);
    assert_eq!(held(&mut core, T0 + 300, 1), 0);
    // New leases on it are counted as usual.
    core.lease(T0 + 400, &want(8, 1));
    assert_eq!(held(&mut core, T0 + 400, 1), 1);
}

#[test]
fn tokens_with_extreme_fields_are_refused_without_panicking() {
    let mut core = agent(T0, &[1]);
    let forged = LeaseToken::sign(
        &ClusterKey::from_passphrase("not the cluster's"),
        LeaseClaims {
            id: u64::MAX,
            agent: 0,
            consumer: ConsumerId(7),
            producer: ProducerId(1),
            expires_ms: u64::MAX,
        },
    );
    let genuine_far = LeaseToken::sign(
        &key(),
        LeaseClaims {
            id: u64::MAX,
            agent: 0,
            consumer: ConsumerId(7),
            producer: ProducerId(u64::MAX),
            expires_ms: u64::MAX,
        },
    );
    let req = LeaseRequest {
        consumer: ConsumerId(7),
        want: u16::MAX,
        renew: vec![forged, genuine_far],
        release: vec![forged, genuine_far],
        reports: vec![
            (forged, ConsumerReport::default()),
            (
                genuine_far,
                ConsumerReport {
                    requests: u32::MAX,
                    errors: u32::MAX,
                    timeouts: u32::MAX,
                    ..Default::default()
                },
            ),
        ],
        avoid: vec![],
    };
    let r = core.lease(u64::MAX - 1, &req);
    assert_eq!(r.refused.len(), 2);
    assert_eq!(r.refused[0].1, Refusal::Forged);
    assert_eq!(r.reports_rejected, 2, "{r:?}");
}
