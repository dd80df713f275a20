//! The agent, producers and consumers in one process, over real loopback sockets:
//! leases, reports, bad input, admission control, restart, rebalancing.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pipewright_balance::{
    AgentClient, AgentConfig, AgentOptions, AgentRequest, AgentResponse, AgentServer,
    BalancedClient, ClientOptions, ClusterKey, ConsumerId, ConsumerReport, LeaseRequest,
    LeaseToken, ProducerId, ProducerOptions, ProducerServer, ProducerStatus, Refusal, ServiceTime,
    ShedConfig, SignedStatus, WeightConfig,
};
use tokio::io::AsyncWriteExt;

fn key() -> ClusterKey {
    ClusterKey::from_passphrase("test cluster")
}

fn agent_opts(dir: &std::path::Path) -> AgentOptions {
    AgentOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir.to_path_buf(),
        key: key(),
        config: AgentConfig {
            lease_ttl: Duration::from_secs(3),
            weights: WeightConfig {
                blackout: Duration::from_millis(300),
                dead_after: Duration::from_millis(1500),
                ..WeightConfig::default()
            },
            ..AgentConfig::default()
        },
        max_in_flight: 256,
        trace: None,
    }
}

async fn producer(id: u64, agent: SocketAddr, ms: u64) -> ProducerServer {
    ProducerServer::start(ProducerOptions {
        id: ProducerId(id),
        agent: Some(agent),
        key: key(),
        service_time: ServiceTime::Fixed(Duration::from_millis(ms)),
        report_every: Duration::from_millis(100),
        seed: id,
        ..ProducerOptions::default()
    })
    .await
    .unwrap()
}

fn client(consumer: u64, agent: SocketAddr, leases: usize) -> BalancedClient {
    BalancedClient::new(ClientOptions {
        consumer: ConsumerId(consumer),
        agents: vec![agent],
        leases,
        renew_every: Duration::from_millis(200),
        ..ClientOptions::default()
    })
}

async fn wait_producers(a: &AgentServer, n: usize) {
    for _ in 0..200 {
        if a.status()
            .producers
            .iter()
            .filter(|p| !p.weight.dead)
            .count()
            >= n
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{n} producers never registered: {:?}", a.status());
}

async fn lease(c: &mut AgentClient, req: LeaseRequest) -> pipewright_balance::LeaseResponse {
    match c.call(&AgentRequest::Lease(req)).await.unwrap() {
        AgentResponse::Lease(r) => r,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_flow_and_requests_complete() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentServer::start(agent_opts(dir.path())).await.unwrap();
    let addr = agent.local_addr();
    let _p: Vec<_> = futures::future::join_all((1..=3).map(|i| producer(i, addr, 1))).await;
    wait_producers(&agent, 3).await;
    let c = client(1, addr, 2);
    assert!(c.wait_ready(Duration::from_secs(5)).await);
    let results = futures::future::join_all(
        (0..300u32).map(|i| c.send(i % 2 == 0, i.to_le_bytes().to_vec())),
    )
    .await;
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.as_ref().unwrap(), &(i as u32).to_le_bytes().to_vec());
    }
    // Reports flow on renewal (the deadline only turns a hang into a failure).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while agent.status().reports_accepted == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = agent.status();
    assert!(
        s.granted >= 2 && s.reports_accepted > 0 && s.reports_rejected == 0,
        "{s:?}"
    );
    println!(
        "300 requests over {:?}; agent: {} granted, {} renewed",
        c.producers(),
        s.granted,
        s.renewed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_foreign_and_repeated_reports_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentServer::start(agent_opts(dir.path())).await.unwrap();
    let addr = agent.local_addr();
    let _p: Vec<_> = futures::future::join_all((1..=2).map(|i| producer(i, addr, 1))).await;
    wait_producers(&agent, 2).await;
    let mut c = AgentClient::connect(addr).await.unwrap();
    let r = lease(
        &mut c,
        LeaseRequest {
            consumer: ConsumerId(1),
            want: 1,
            ..Default::default()
        },
    )
    .await;
    let t = r.granted[0].token;
    let other = if t.claims.producer == ProducerId(1) {
        ProducerId(2)
    } else {
        ProducerId(1)
    };
    let bad = ConsumerReport {
        requests: 100,
        mean_latency_us: 1e6,
        errors: 100,
        timeouts: 0,
    };
    // A lease id edited to name the producer the consumer never held.
    let mut edited = t;
    edited.claims.producer = other;
    // One signed with another key.
    let foreign = LeaseToken::sign(&ClusterKey::from_passphrase("attacker"), edited.claims);
    let r = lease(
        &mut c,
        LeaseRequest {
            consumer: ConsumerId(1),
            reports: vec![(edited, bad), (foreign, bad)],
            renew: vec![edited],
            ..Default::default()
        },
    )
    .await;
    assert_eq!((r.reports_accepted, r.reports_rejected), (0, 2));
    assert_eq!(r.refused, vec![(edited, Refusal::Forged)]);
    // Another consumer presenting consumer 1's genuine lease.
    let r = lease(
        &mut c,
        LeaseRequest {
            consumer: ConsumerId(2),
            reports: vec![(t, bad)],
            renew: vec![t],
            ..Default::default()
        },
    )
    .await;
    assert_eq!((r.reports_accepted, r.reports_rejected), (0, 1));
    assert_eq!(r.refused, vec![(t, Refusal::NotYours)]);
    // The genuine holder: one report per lease id, a repeat is rejected.
    let good = ConsumerReport {
        requests: 10,
        mean_latency_us: 500.0,
        errors: 0,
        timeouts: 0,
    };
    let r = lease(
        &mut c,
        LeaseRequest {
            consumer: ConsumerId(1),
            reports: vec![(t, good), (t, bad)],
            ..Default::default()
        },
    )
    .await;
    assert_eq!((r.reports_accepted, r.reports_rejected), (1, 1));
    let s = agent.status();
    let v = s
        .producers
        .iter()
        .find(|p| p.weight.producer == other)
        .unwrap();
    assert_eq!(
        v.weight.error_factor, 1.0,
        "the never-leased producer was pushed down"
    );
    assert_eq!(s.reports_rejected, 4);
    println!(
        "rejected {} forged/foreign/repeated reports",
        s.reports_rejected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_forged_status_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentServer::start(agent_opts(dir.path())).await.unwrap();
    let addr = agent.local_addr();
    // Garbage body in a well-formed frame: a clear refusal, connection kept.
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut f = tokio_util::codec::Framed::new(s, pipewright_balance::codec(1 << 20));
    f.send(bytes::Bytes::from_static(&[
        0xff, 0xff, 0xff, 0x7f, 1, 2, 3,
    ]))
    .await
    .unwrap();
    let answer: AgentResponse =
        pipewright_balance::decode(&f.next().await.unwrap().unwrap()).unwrap();
    assert!(matches!(answer, AgentResponse::Refused(_)), "{answer:?}");
    // Oversized: a 16 MiB length prefix: the connection is closed without reading it.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&(16u32 << 20).to_be_bytes()).await.unwrap();
    s.write_all(&[0u8; 1024]).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf)
        .await
        .unwrap_or(0);
    assert_eq!(n, 0, "oversized frame answered");
    // A producer status under the wrong key.
    let st = ProducerStatus {
        id: ProducerId(9),
        addr,
        gossip: addr,
        report: Default::default(),
        indicators: Default::default(),
        shed_total: 0,
        last_verdict: None,
        leaving: false,
    };
    let mut c = AgentClient::connect(addr).await.unwrap();
    let a = c
        .call(&AgentRequest::Producer(SignedStatus::sign(
            &ClusterKey::from_passphrase("x"),
            st,
        )))
        .await
        .unwrap();
    assert!(matches!(a, AgentResponse::Refused(_)));
    let s = agent.status();
    assert_eq!(
        (s.malformed, s.forged_status, s.producers.len()),
        (2, 1, 0),
        "{s:?}"
    );
    // Nothing else disturbed.
    let r = lease(
        &mut c,
        LeaseRequest {
            consumer: ConsumerId(1),
            want: 1,
            ..Default::default()
        },
    )
    .await;
    assert!(r.granted.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_gets_clear_busy_answers() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentServer::start(AgentOptions {
        max_in_flight: 2,
        ..agent_opts(dir.path())
    })
    .await
    .unwrap();
    let addr = agent.local_addr();
    let _p = producer(1, addr, 1).await;
    wait_producers(&agent, 1).await;
    let tasks: Vec<_> = (0..64u64)
        .map(|i| {
            tokio::spawn(async move {
                let mut c = AgentClient::connect(addr).await.unwrap();
                let (mut answered, mut ok, mut busy) = (0u64, 0u64, 0u64);
                for _ in 0..20 {
                    match c
                        .call(&AgentRequest::Lease(LeaseRequest {
                            consumer: ConsumerId(i),
                            want: 1,
                            ..Default::default()
                        }))
                        .await
                        .unwrap()
                    {
                        AgentResponse::Lease(r) => {
                            answered += 1;
                            ok += r.granted.len() as u64;
                        }
                        AgentResponse::Busy => busy += 1,
                        other => panic!("{other:?}"),
                    }
                }
                (answered, ok, busy)
            })
        })
        .collect();
    let (mut answered, mut ok, mut busy) = (0, 0, 0);
    for t in tasks {
        let (a, o, b) = t.await.unwrap();
        answered += a;
        ok += o;
        busy += b;
    }
    let s = agent.status();
    // Every request got an answer, and 64 clients at once against 2 in flight found the
    // agent busy (admission control works).
    assert_eq!(answered + busy, 64 * 20);
    assert!(busy > 0, "64 concurrent clients never found 2 slots taken");
    // Only lease requests are refused busy: producer statuses bypass admission.
    assert_eq!(s.busy, busy);
    assert_eq!(s.granted, ok);
    println!("flood of {}: {ok} served, {busy} answered busy", 64 * 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_producers_and_leases() {
    let dir = tempfile::tempdir().unwrap();
    let opts = agent_opts(dir.path());
    let agent = AgentServer::start(opts.clone()).await.unwrap();
    let addr = agent.local_addr();
    let p = producer(1, addr, 1).await;
    wait_producers(&agent, 1).await;
    let mut c = AgentClient::connect(addr).await.unwrap();
    let r = lease(
        &mut c,
        LeaseRequest {
            consumer: ConsumerId(1),
            want: 1,
            ..Default::default()
        },
    )
    .await;
    let t = r.granted[0].token;
    agent.run_until(async {}).await.unwrap();
    drop(p);
    // A new agent on the same port and directory: the producer is known before it
    // reports again, and the lease issued before the restart renews.
    let agent = AgentServer::start(AgentOptions {
        listen: addr,
        ..opts
    })
    .await
    .unwrap();
    let s = agent.status();
    assert_eq!(s.producers.len(), 1);
    let mut c = AgentClient::connect(addr).await.unwrap();
    let r = lease(
        &mut c,
        LeaseRequest {
            consumer: ConsumerId(1),
            renew: vec![t],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.renewed.len(), 1, "{r:?}");
    assert_eq!(r.renewed[0].token.claims.producer, t.claims.producer);
}

/// A node joins a loaded cluster: connections flow to it by shedding, no client error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_node_receives_connections() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentServer::start(agent_opts(dir.path())).await.unwrap();
    let addr = agent.local_addr();
    let shed = ShedConfig {
        hits: 2,
        stale_after: Duration::from_millis(500),
        ..ShedConfig::default()
    };
    let node = |id: u64| {
        ProducerServer::start(ProducerOptions {
            id: ProducerId(id),
            agent: Some(addr),
            key: key(),
            service_time: ServiceTime::Fixed(Duration::from_millis(1)),
            report_every: Duration::from_millis(100),
            shed: Some(shed),
            seed: id,
            ..ProducerOptions::default()
        })
    };
    let first = node(1).await.unwrap();
    wait_producers(&agent, 1).await;
    let clients: Vec<_> = (0..24).map(|i| client(i, addr, 1)).collect();
    for c in &clients {
        assert!(c.wait_ready(Duration::from_secs(5)).await);
    }
    // A bounded wait (20 s), long enough for a loaded machine: every client connects.
    for _ in 0..2_000 {
        if first.stats().connections.load(Ordering::Relaxed) == 24 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(first.stats().connections.load(Ordering::Relaxed), 24);
    let second = node(2).await.unwrap();
    let third = node(3).await.unwrap();
    // Keep every client busy while connections move; count what the clients see.
    let mut sent = 0u64;
    let mut balanced = false;
    for _round in 0..5_000 {
        let rs = futures::future::join_all(clients.iter().map(|c| c.send(false, vec![1]))).await;
        for r in rs {
            r.expect("client-visible error during rebalancing");
            sent += 1;
        }
        let n: Vec<u32> = [&first, &second, &third]
            .iter()
            .map(|p| p.stats().connections.load(Ordering::Relaxed))
            .collect();
        if n.iter().all(|&x| x >= 6) && n.iter().sum::<u32>() == 24 {
            balanced = true;
            break;
        }
    }
    let shed: u64 = [&first, &second, &third]
        .iter()
        .map(|p| p.stats().shed.load(Ordering::Relaxed))
        .sum();
    let n: Vec<u32> = [&first, &second, &third]
        .iter()
        .map(|p| p.stats().connections.load(Ordering::Relaxed))
        .collect();
    println!("after {sent} requests: connections {n:?}, {shed} shed");
    for c in &clients {
        let st = c.stats();
        println!(
            "{:?} moved {} goaway {} retried {}",
            c.producers(),
            st.moved.load(Ordering::Relaxed),
            st.go_aways.load(Ordering::Relaxed),
            st.retried.load(Ordering::Relaxed)
        );
    }
    assert!(balanced, "connections did not spread: {n:?}");
    assert!(shed <= 2 * 16 + 3, "{shed} closures for 16 needed moves");
}

/// Two agents, each assigned its own producers; a consumer told of both fails over to
/// the second when the first stops, and keeps serving without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_fails_over_between_agents() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a1 = AgentServer::start(AgentOptions {
        config: AgentConfig {
            agent: 1,
            ..agent_opts(d1.path()).config
        },
        ..agent_opts(d1.path())
    })
    .await
    .unwrap();
    let a2 = AgentServer::start(AgentOptions {
        config: AgentConfig {
            agent: 2,
            ..agent_opts(d2.path()).config
        },
        ..agent_opts(d2.path())
    })
    .await
    .unwrap();
    let (x1, x2) = (a1.local_addr(), a2.local_addr());
    let _p = [
        producer(1, x1, 1).await,
        producer(2, x1, 1).await,
        producer(3, x2, 1).await,
        producer(4, x2, 1).await,
    ];
    wait_producers(&a1, 2).await;
    wait_producers(&a2, 2).await;
    // Consumer 2 starts at agent index 2 % 2 = 0: the first agent.
    let c = BalancedClient::new(ClientOptions {
        consumer: ConsumerId(2),
        agents: vec![x1, x2],
        leases: 2,
        renew_every: Duration::from_millis(200),
        ..ClientOptions::default()
    });
    assert!(c.wait_ready(Duration::from_secs(5)).await);
    let mut on = c.producers();
    on.sort();
    assert_eq!(on, vec![ProducerId(1), ProducerId(2)]);
    a1.run_until(async {}).await.unwrap();
    let mut moved = false;
    for _ in 0..500 {
        for r in futures::future::join_all((0..8).map(|_| c.send(false, vec![7]))).await {
            r.expect("client-visible error during agent failover");
        }
        if c.producers().iter().all(|p| p.0 >= 3) && !c.producers().is_empty() {
            moved = true;
            break;
        }
    }
    assert!(moved, "still on {:?}", c.producers());
    assert!(
        a2.status().refused > 0,
        "the first agent's leases were not refused by the second"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_client_closes_its_connections() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentServer::start(agent_opts(dir.path())).await.unwrap();
    let addr = agent.local_addr();
    let p = producer(1, addr, 1).await;
    wait_producers(&agent, 1).await;
    let c = client(1, addr, 1);
    assert!(c.wait_ready(Duration::from_secs(5)).await);
    c.send(false, vec![1]).await.unwrap();
    assert_eq!(p.stats().connections.load(Ordering::Relaxed), 1);
    drop(c);
    // A bounded wait (20 s): the connection task notices the client is gone.
    for _ in 0..2_000 {
        if p.stats().connections.load(Ordering::Relaxed) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the producer still has the dropped client's connection open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_a_producers_queue_limit_is_answered_busy() {
    use pipewright_balance::{ProducerFrame, Request};
    // One service slot held for a minute and two places in the queue: whatever the
    // timing, at most three of a burst of ten are accepted, so seven or more are refused.
    let producer = ProducerServer::start(ProducerOptions {
        service_time: ServiceTime::Fixed(Duration::from_secs(60)),
        capacity: 1,
        queue_limit: 2,
        ..ProducerOptions::default()
    })
    .await
    .unwrap();
    let s = tokio::net::TcpStream::connect(producer.local_addr())
        .await
        .unwrap();
    let mut f = tokio_util::codec::Framed::new(s, pipewright_balance::codec(1 << 20));
    for id in 0..10 {
        let req = Request {
            id,
            idempotent: true,
            payload: vec![0; 8],
        };
        f.feed(pipewright_balance::encode(&req)).await.unwrap();
    }
    SinkExt::<bytes::Bytes>::flush(&mut f).await.unwrap();
    let mut busy = 0;
    while busy < 7 {
        let frame = tokio::time::timeout(Duration::from_secs(20), f.next())
            .await
            .unwrap_or_else(|_| panic!("only {busy} of a burst of 10 refused, 7 expected"))
            .unwrap()
            .unwrap();
        match pipewright_balance::decode(&frame).unwrap() {
            ProducerFrame::Busy { .. } => busy += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(producer.stats().busy.load(Ordering::Relaxed) >= 7);
}
