//! One consumer connection of a producer: requests read and served, answers written,
//! bounded per connection; `GoAway` and the drain when the producer sheds it.

use super::*;

struct ConnGuard<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.inner.stats.connections.fetch_sub(1, Ordering::Relaxed);
        self.inner
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

pub(super) async fn serve(stream: TcpStream, inner: Arc<Inner>) {
    let id = inner.next_conn.fetch_add(1, Ordering::Relaxed);
    let (go_tx, mut go_rx) = mpsc::unbounded_channel();
    inner
        .conns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            id,
            Conn {
                go_away: go_tx,
                opened: Instant::now(),
            },
        );
    inner.stats.connections.fetch_add(1, Ordering::Relaxed);
    let _guard = ConnGuard { inner: &inner, id };
    let (mut sink, mut frames) = Framed::new(stream, wire::codec(MAX_PRODUCER_FRAME)).split();
    // Bounded: a client that sends without reading its answers stops being read (its
    // socket fills up) instead of the producer queueing answers without limit.
    let (tx, mut rx) = mpsc::channel::<ProducerFrame>(ANSWERS_PER_CONNECTION);
    let writer = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if sink.send(wire::encode(&f)).await.is_err() {
                return;
            }
        }
    });
    let pending = Arc::new(AtomicU32::new(0));
    let mut crashed = inner.crashed.subscribe();
    if *crashed.borrow() {
        return;
    }
    let mut draining = false;
    let mut drain_deadline = None::<tokio::time::Instant>;
    let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
    loop {
        // Room for the next answer first.
        let permit = tokio::select! {
            p = tx.clone().reserve_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = crashed.changed() => {
                writer.abort();
                return;
            }
            _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(far)), if drain_deadline.is_some() => break,
        };
        let frame = tokio::select! {
            f = frames.next() => f,
            _ = crashed.changed() => {
                writer.abort();
                return;
            }
            Some(()) = go_rx.recv(), if !draining => {
                draining = true;
                drain_deadline = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
                permit.send(ProducerFrame::GoAway);
                continue;
            }
            _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(far)), if drain_deadline.is_some() => break,
        };
        let bytes = match frame {
            Some(Ok(b)) => b,
            Some(Err(_)) => {
                inner.stats.malformed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("balance_producer_malformed_total").increment(1);
                break;
            }
            None => break,
        };
        let req: Request = match wire::decode(&bytes) {
            Ok(r) => r,
            Err(_) => {
                inner.stats.malformed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("balance_producer_malformed_total").increment(1);
                break;
            }
        };
        // Admitted here, before its task runs: a burst of requests read in one go is
        // counted against the queue limit as it arrives.
        let place = if draining {
            None
        } else {
            inner.queue.try_admit()
        };
        let Some(place) = place else {
            inner.stats.busy.fetch_add(1, Ordering::Relaxed);
            permit.send(ProducerFrame::Busy { id: req.id });
            continue;
        };
        let (inner2, pending2) = (inner.clone(), pending.clone());
        pending.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            // Counted down even if the request's task ends early.
            let _done = CountDown(pending2);
            let answer = execute(&inner2, req, place).await;
            permit.send(answer);
        });
    }
    // Drained close: answer everything accepted before closing, within the limit.
    let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
    while pending.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(tx);
    // A client that reads nothing would hold the writer forever.
    let abort = writer.abort_handle();
    if tokio::time::timeout_at(deadline, writer).await.is_err() {
        abort.abort();
    }
}

/// Answers queued or in service per connection before the producer stops reading it.
const ANSWERS_PER_CONNECTION: usize = 256;

/// How long a closing connection waits for its answers to be served and written.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Decrements a counter when dropped.
struct CountDown(Arc<AtomicU32>);

impl Drop for CountDown {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one admitted request: its place in the queue is given back once it has a
/// service slot.
async fn execute(inner: &Inner, req: Request, queued: Admitted) -> ProducerFrame {
    let s = &inner.stats;
    s.in_flight.fetch_add(1, Ordering::Relaxed);
    s.waiting.fetch_add(1, Ordering::Relaxed);
    let permit = inner.slots.acquire().await;
    s.waiting.fetch_sub(1, Ordering::Relaxed);
    drop(queued);
    let (service, fail) = {
        let mut rng = inner.rng.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = inner.opts.service_time;
        if let Some(after) = inner.opts.degrade_after {
            if inner.started.elapsed() >= after {
                st = st.scaled(inner.opts.degrade_factor);
            }
        }
        let f = f64::from_bits(inner.factor.load(Ordering::Relaxed));
        if f != 1.0 {
            st = st.scaled(f);
        }
        (
            st.sample(&mut *rng),
            rng.random::<f64>() < inner.opts.error_rate,
        )
    };
    tokio::time::sleep(service).await;
    drop(permit);
    s.busy_us
        .fetch_add(service.as_micros() as u64, Ordering::Relaxed);
    s.in_flight.fetch_sub(1, Ordering::Relaxed);
    s.completed.fetch_add(1, Ordering::Relaxed);
    if fail {
        s.failed.fetch_add(1, Ordering::Relaxed);
        ProducerFrame::Failed {
            id: req.id,
            reason: "injected failure".into(),
        }
    } else {
        ProducerFrame::Done {
            id: req.id,
            payload: req.payload,
        }
    }
}
