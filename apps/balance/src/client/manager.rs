//! The client's background side: the lease manager (renew, report, release,
//! replace) and one connection task per leased producer.

use super::*;

/// Connects to a leased producer and starts its connection task.
async fn connect(shared: &Arc<Shared>, lease: Lease) -> Option<Arc<Held>> {
    let stream = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(lease.addr))
        .await
        .ok()?
        .ok()?;
    let _ = stream.set_nodelay(true);
    let (tx, rx) = mpsc::unbounded_channel();
    let held = Arc::new(Held {
        token: Mutex::new(lease.token),
        producer: lease.token.claims.producer,
        tx,
        draining: AtomicBool::new(false),
        went_away: AtomicBool::new(false),
        dead: AtomicBool::new(false),
        pending: AtomicU32::new(0),
        outstanding: Mutex::new(HashMap::new()),
        // Without a hint, tower's default first estimate (0.5 ms).
        ewma: Mutex::new((
            if lease.latency_hint_us > 0.0 {
                lease.latency_hint_us
            } else {
                500.0
            },
            Instant::now(),
        )),
        period: Mutex::new(ConsumerReport::default()),
    });
    tokio::spawn(conn_task(stream, rx, held.clone(), shared.clone()));
    Some(held)
}

/// Times a busy agent is asked again within one renewal period, and the pause before.
const BUSY_RETRIES: u32 = 3;
const BUSY_BACKOFF: Duration = Duration::from_millis(50);

/// How long a draining connection waits for the answers to what it sent.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

async fn conn_task(
    stream: TcpStream,
    mut rx: mpsc::UnboundedReceiver<(Request, oneshot::Sender<Outcome>)>,
    held: Arc<Held>,
    shared: Arc<Shared>,
) {
    let (mut sink, mut frames) = Framed::new(stream, wire::codec(MAX_PRODUCER_FRAME)).split();
    let mut pending: Pending = HashMap::new();
    let mut input_open = true;
    let mut draining_since: Option<Instant> = None;
    loop {
        if shared.closed.load(Ordering::Acquire) {
            // The client is gone: nobody can call through this connection any more.
            break;
        }
        // Callers that gave up (timed out) wait for no answer.
        pending.retain(|_, t| !t.is_closed());
        if held.draining.load(Ordering::Acquire) {
            let since = *draining_since.get_or_insert_with(Instant::now);
            // Drained (everything sent was answered), or the producer does not answer
            // what it took: close. What was queued meanwhile is refused below,
            // unexecuted.
            if pending.is_empty() || since.elapsed() >= DRAIN_LIMIT {
                break;
            }
        }
        tokio::select! {
            m = rx.recv(), if input_open => match m {
                Some((req, t)) => {
                    if held.draining.load(Ordering::Acquire) && held.went_away.load(Ordering::Acquire) {
                        let _ = t.send(Outcome::Busy);
                        continue;
                    }
                    let id = req.id;
                    pending.insert(id, t);
                    if sink.send(wire::encode(&req)).await.is_err() {
                        break;
                    }
                }
                None => input_open = false,
            },
            f = frames.next() => {
                let Some(Ok(bytes)) = f else { break };
                let Ok(frame) = wire::decode::<ProducerFrame>(&bytes) else { break };
                let (id, outcome) = match frame {
                    ProducerFrame::Done { id, payload } => (id, Outcome::Done(payload)),
                    ProducerFrame::Failed { id, reason } => (id, Outcome::Failed(reason)),
                    ProducerFrame::Busy { id } => (id, Outcome::Busy),
                    ProducerFrame::GoAway => {
                        held.went_away.store(true, Ordering::Release);
                        held.draining.store(true, Ordering::Release);
                        shared.stats.go_aways.fetch_add(1, Ordering::Relaxed);
                        shared.wake.notify_one();
                        continue;
                    }
                };
                if let Some(t) = pending.remove(&id) {
                    let _ = t.send(outcome);
                }
            }
            // Re-check draining now and then (set by the manager without a message).
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    held.dead.store(true, Ordering::Release);
    for (_, t) in pending.drain() {
        let _ = t.send(Outcome::Lost);
    }
    rx.close();
    while let Ok((_, t)) = rx.try_recv() {
        let _ = t.send(Outcome::Busy);
    }
    shared.wake.notify_one();
}

/// The lease manager: renew, report, release and replace leases.
pub(super) async fn manage(shared: Arc<Shared>) {
    let opts = shared.opts.clone();
    let mut agent: Option<AgentClient> = None;
    let mut next_agent = if opts.agents.is_empty() {
        0
    } else {
        opts.consumer.0 as usize % opts.agents.len()
    };
    let mut avoid: Vec<(ProducerId, Instant)> = Vec::new();
    loop {
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        let now = now_ms();
        avoid.retain(|(_, at)| at.elapsed() < opts.avoid_for);
        let (live, ended): (Vec<Arc<Held>>, Vec<Arc<Held>>) = {
            let mut leases = shared.leases.lock().unwrap_or_else(|p| p.into_inner());
            for h in leases.iter() {
                if h.token
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .claims
                    .expires_ms
                    <= now
                {
                    h.draining.store(true, Ordering::Release);
                }
            }
            let all = std::mem::take(&mut *leases);
            let (live, ended): (Vec<_>, Vec<_>) = all.into_iter().partition(|h| h.usable());
            *leases = live.clone();
            (live, ended)
        };
        for h in &ended {
            shared.stats.moved.fetch_add(1, Ordering::Relaxed);
            if h.went_away.load(Ordering::Acquire) || h.dead.load(Ordering::Acquire) {
                avoid.push((h.producer, Instant::now()));
            }
        }
        let mut req = LeaseRequest {
            consumer: opts.consumer,
            want: opts.leases.saturating_sub(live.len()) as u16,
            avoid: avoid.iter().map(|a| a.0).collect(),
            ..LeaseRequest::default()
        };
        for h in live.iter().chain(&ended) {
            let token = *h.token.lock().unwrap_or_else(|p| p.into_inner());
            let r = h.take_report();
            if r.requests > 0 || r.timeouts > 0 {
                req.reports.push((token, r));
            }
        }
        req.renew = live
            .iter()
            .map(|h| *h.token.lock().unwrap_or_else(|p| p.into_inner()))
            .collect();
        req.release = ended
            .iter()
            .map(|h| *h.token.lock().unwrap_or_else(|p| p.into_inner()))
            .collect();
        let mut answer = None;
        let (mut agents_left, mut busy_left) = (opts.agents.len(), BUSY_RETRIES);
        while agents_left > 0 {
            if agent.is_none() {
                agent = AgentClient::connect(opts.agents[next_agent]).await.ok();
            }
            if let Some(c) = agent.as_mut() {
                match c.call(&AgentRequest::Lease(req.clone())).await {
                    Ok(AgentResponse::Lease(r)) => {
                        answer = Some(r);
                        break;
                    }
                    // A busy agent is asked again: another agent would refuse to renew
                    // the leases this one issued. If it stays busy, the leases held
                    // still last a lease length; the next period tries again.
                    Ok(AgentResponse::Busy) => {
                        shared.stats.agent_busy.fetch_add(1, Ordering::Relaxed);
                        if busy_left == 0 {
                            break;
                        }
                        busy_left -= 1;
                        tokio::time::sleep(BUSY_BACKOFF).await;
                        continue;
                    }
                    _ => {}
                }
            }
            shared.stats.agent_errors.fetch_add(1, Ordering::Relaxed);
            agent = None;
            next_agent = (next_agent + 1) % opts.agents.len();
            agents_left -= 1;
        }
        if let Some(r) = answer {
            for l in &r.renewed {
                // A renewal keeps the lease id's producer; match on the producer.
                if let Some(h) = live.iter().find(|h| h.producer == l.token.claims.producer) {
                    *h.token.lock().unwrap_or_else(|p| p.into_inner()) = l.token;
                }
            }
            for (t, _) in &r.refused {
                if let Some(h) = live.iter().find(|h| {
                    h.token.lock().unwrap_or_else(|p| p.into_inner()).claims.id == t.claims.id
                }) {
                    h.draining.store(true, Ordering::Release);
                }
            }
            for l in r.granted {
                match connect(&shared, l).await {
                    Some(h) => shared
                        .leases
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(h),
                    None => avoid.push((l.token.claims.producer, Instant::now())),
                }
            }
            shared.ready.notify_waiters();
        }
        // Renew on the period, or at once when a lease is lost or none is held.
        let sleep = if shared
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|h| h.usable())
        {
            opts.renew_every
        } else {
            Duration::from_millis(100).min(opts.renew_every)
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = shared.wake.notified() => {
                // Let a burst of failures settle into one request.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}
