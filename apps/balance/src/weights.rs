//! The weight engine: per-producer selection weights from producer and consumer
//! reports, and a selection that does not herd. Sans-I/O: every call takes `now`.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// A producer's identity, unique within an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProducerId(pub u64);

/// A consumer's identity (chosen by the consumer; bound into its lease ids).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct ConsumerId(pub u64);

/// What a producer reports about itself (an ORCA-like load report).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ProducerReport {
    /// Busy fraction of its capacity over the last period, 0..=1 (values above 1 are
    /// clamped).
    pub utilisation: f64,
    /// Requests waiting for a service slot when the report was made.
    pub queue_depth: u32,
    /// Requests completed per second over the last period (all outcomes).
    pub rps: f64,
    /// Failed requests per second over the last period.
    pub error_rate: f64,
    /// The producer is shedding connections: give it no new leases.
    pub shedding: bool,
    /// Mean service time of the period's requests, microseconds (0 = none served).
    #[serde(default)]
    pub service_us: f64,
}

/// What a consumer observed of one producer since its previous report.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ConsumerReport {
    /// Requests completed (any outcome) in the period.
    pub requests: u32,
    /// Mean latency of those requests, microseconds.
    pub mean_latency_us: f64,
    /// Requests that failed with an error answer.
    pub errors: u32,
    /// Requests that timed out or lost their connection.
    pub timeouts: u32,
}

/// Tuning of [`Weights`]. The defaults follow gRFC A58 where it has one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WeightConfig {
    /// A producer's own reports are not used until this long after its first one
    /// (A58 `blackout_period`, 10 s); until then it gets the mean weight.
    pub blackout: Duration,
    /// A producer report older than this no longer sets the weight (A58
    /// `weight_expiration_period`, 3 min); the mean weight is used instead.
    pub weight_expiry: Duration,
    /// A producer that has not reported for this long is presumed dead: no leases.
    pub dead_after: Duration,
    /// A58 `error_utilization_penalty` (1.0).
    pub error_penalty: f64,
    /// Time constant of the consumer-observed latency/error averages, and of their
    /// fading back to neutral when no consumer reports arrive.
    pub consumer_decay: Duration,
    /// How hard consumer-observed failures pull a weight down: the factor is
    /// `1 / (1 + consumer_error_penalty * failure_fraction)`.
    pub consumer_error_penalty: f64,
    /// The latency factor is clamped to `[1/latency_clamp, latency_clamp]`.
    pub latency_clamp: f64,
    /// Seed of the selection's random draws.
    pub seed: u64,
}

impl Default for WeightConfig {
    fn default() -> Self {
        Self {
            blackout: Duration::from_secs(10),
            weight_expiry: Duration::from_secs(180),
            dead_after: Duration::from_secs(5),
            error_penalty: 1.0,
            consumer_decay: Duration::from_secs(10),
            consumer_error_penalty: 8.0,
            latency_clamp: 20.0,
            seed: 0x5eed,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct ConsumerView {
    /// Exponentially weighted mean latency, µs.
    latency_us: f64,
    /// Exponentially weighted failure fraction, 0..=1.
    failures: f64,
    at: Duration,
}

#[derive(Debug, Clone)]
struct Producer {
    added: Duration,
    first_report: Option<Duration>,
    last_report: Option<(Duration, ProducerReport)>,
    /// The last report with requests and utilisation (A58 ignores empty reports: an
    /// idle producer keeps its last weight until it expires).
    last_nonempty: Option<(Duration, ProducerReport)>,
    consumers: Option<ConsumerView>,
    active_leases: u64,
}

/// One recorded input of the engine, with the time it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimedEvent {
    /// When (caller's clock, any fixed origin).
    pub at: Duration,
    /// What.
    pub event: Event,
}

/// An input of [`Weights`]; a log of these replays the engine exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// A producer joined.
    Add(ProducerId),
    /// A producer left (deregistered).
    Remove(ProducerId),
    /// A producer's own report.
    Producer(ProducerId, ProducerReport),
    /// A consumer's verified report about a producer it held a lease on.
    Consumer(ProducerId, ConsumerReport),
    /// Pick `count` distinct producers, none of `avoid`.
    Select {
        /// How many.
        count: usize,
        /// Producers the consumer must not get (e.g. the one that just shed it).
        avoid: Vec<ProducerId>,
    },
    /// A lease on this producer ended.
    Release(ProducerId),
    /// A lease on this producer was taken up without a selection (a renewal of a
    /// lease issued before an agent restart).
    Acquire(ProducerId),
}

/// One producer's weight and what it is made of, for status and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightView {
    /// The producer.
    pub producer: ProducerId,
    /// Final selection weight (0 = not selectable).
    pub weight: f64,
    /// The producer-report part (A58), or the mean when it had none.
    pub base: f64,
    /// Consumer latency factor.
    pub latency_factor: f64,
    /// Consumer failure factor.
    pub error_factor: f64,
    /// Still in its blackout period.
    pub blackout: bool,
    /// Presumed dead (no report for `dead_after`).
    pub dead: bool,
    /// Reported shedding.
    pub shedding: bool,
    /// Leases currently out on it.
    pub active_leases: u64,
}

/// The weight engine. See the crate docs for the formula.
#[derive(Debug, Clone)]
pub struct Weights {
    config: WeightConfig,
    producers: BTreeMap<ProducerId, Producer>,
    rng: ChaCha8Rng,
}

impl Weights {
    /// An engine with no producers.
    pub fn new(config: WeightConfig) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            config,
            producers: BTreeMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &WeightConfig {
        &self.config
    }

    /// Known producers.
    pub fn producers(&self) -> impl Iterator<Item = ProducerId> + '_ {
        self.producers.keys().copied()
    }

    /// Whether `id` is known.
    pub fn contains(&self, id: ProducerId) -> bool {
        self.producers.contains_key(&id)
    }

    /// Adds a producer (no-op if known). It is alive for `dead_after` without reports.
    pub fn add(&mut self, now: Duration, id: ProducerId) {
        self.producers.entry(id).or_insert(Producer {
            added: now,
            first_report: None,
            last_report: None,
            last_nonempty: None,
            consumers: None,
            active_leases: 0,
        });
    }

    /// Removes a producer.
    pub fn remove(&mut self, id: ProducerId) -> bool {
        self.producers.remove(&id).is_some()
    }

    /// A producer's own report. Unknown producers are added first. Non-finite or
    /// negative fields are treated as 0.
    pub fn producer_report(&mut self, now: Duration, id: ProducerId, report: ProducerReport) {
        self.add(now, id);
        let p = self.producers.get_mut(&id).expect("just added");
        let clean = ProducerReport {
            utilisation: sane(report.utilisation).min(1.0),
            queue_depth: report.queue_depth,
            rps: sane(report.rps),
            error_rate: sane(report.error_rate),
            shedding: report.shedding,
            service_us: sane(report.service_us),
        };
        if clean.rps > 0.0 && clean.utilisation > 0.0 {
            // The blackout runs from the first non-empty report (A58's non_empty_since).
            if p.first_report.is_none() {
                p.first_report = Some(now);
            }
            p.last_nonempty = Some((now, clean));
        }
        p.last_report = Some((now, clean));
    }

    /// A consumer's report on a producer (the caller has verified the consumer held a
    /// lease on it). Ignored for unknown producers and empty reports.
    pub fn consumer_report(&mut self, now: Duration, id: ProducerId, report: ConsumerReport) {
        let decay = self.config.consumer_decay;
        let Some(p) = self.producers.get_mut(&id) else {
            return;
        };
        if report.requests == 0 && report.timeouts == 0 {
            return;
        }
        let total = f64::from(
            report
                .requests
                .max(report.errors.saturating_add(report.timeouts))
                .max(1),
        );
        let fail = (f64::from(report.errors) + f64::from(report.timeouts)) / total;
        let lat = sane(report.mean_latency_us);
        match &mut p.consumers {
            None => {
                p.consumers = Some(ConsumerView {
                    latency_us: lat,
                    failures: fail.min(1.0),
                    at: now,
                })
            }
            Some(v) => {
                let keep = fade(now.saturating_sub(v.at), decay);
                // A report with requests sets latency; a timeouts-only report does not.
                if report.requests > report.errors.saturating_add(report.timeouts) || lat > 0.0 {
                    v.latency_us = v.latency_us * keep + lat * (1.0 - keep);
                }
                v.failures = (v.failures * keep + fail * (1.0 - keep)).min(1.0);
                v.at = now;
            }
        }
    }

    /// What a consumer should expect of `id`'s latency, µs: the consumers' average if
    /// fresh, else the producer's own mean service time (a new lease starts its
    /// latency estimate here instead of probing a known-slow producer).
    pub fn latency_hint(&self, now: Duration, id: ProducerId) -> Option<f64> {
        let p = self.producers.get(&id)?;
        if let Some(v) = &p.consumers {
            if now.saturating_sub(v.at) <= self.config.consumer_decay && v.latency_us > 0.0 {
                return Some(v.latency_us);
            }
        }
        p.last_nonempty
            .map(|(_, r)| r.service_us)
            .filter(|&s| s > 0.0)
    }

    /// A lease on `id` ended (expired, released or revoked).
    pub fn release(&mut self, id: ProducerId) {
        if let Some(p) = self.producers.get_mut(&id) {
            p.active_leases = p.active_leases.saturating_sub(1);
        }
    }

    /// A lease on `id` was handed out without [`select`](Self::select) (e.g. a
    /// renewal after an agent restart).
    pub fn acquire(&mut self, id: ProducerId) {
        if let Some(p) = self.producers.get_mut(&id) {
            p.active_leases += 1;
        }
    }

    fn a58(&self, now: Duration, p: &Producer) -> Option<f64> {
        let (at, r) = p.last_nonempty?;
        let first = p.first_report?;
        if now.saturating_sub(at) > self.config.weight_expiry
            || now.saturating_sub(first) < self.config.blackout
            || r.rps <= 0.0
            || r.utilisation <= 0.0
        {
            return None;
        }
        let w = r.rps / (r.utilisation + (r.error_rate / r.rps) * self.config.error_penalty);
        // Bounded so that sums and products of weights stay finite.
        (w > 0.0).then_some(w.min(1e12))
    }

    fn dead(&self, now: Duration, p: &Producer) -> bool {
        let last = p.last_report.map_or(p.added, |(at, _)| at);
        now.saturating_sub(last) > self.config.dead_after
    }

    /// Every producer's weight and its parts, in id order.
    pub fn view(&self, now: Duration) -> Vec<WeightView> {
        let c = &self.config;
        let bases: Vec<f64> = self
            .producers
            .values()
            .filter(|p| !self.dead(now, p))
            .filter_map(|p| self.a58(now, p))
            .collect();
        let mean_base = if bases.is_empty() {
            1.0
        } else {
            bases.iter().sum::<f64>() / bases.len() as f64
        };
        // Geometric mean of the consumer-observed latencies (fresh ones only): a
        // latency factor relative to it is scale-free.
        let lats: Vec<f64> = self
            .producers
            .values()
            .filter_map(|p| p.consumers.as_ref())
            .filter(|v| now.saturating_sub(v.at) <= c.weight_expiry && v.latency_us > 0.0)
            .map(|v| v.latency_us.ln())
            .collect();
        let geo = (!lats.is_empty()).then(|| (lats.iter().sum::<f64>() / lats.len() as f64).exp());
        self.producers
            .iter()
            .map(|(&id, p)| {
                let dead = self.dead(now, p);
                let blackout = p
                    .first_report
                    .is_none_or(|f| now.saturating_sub(f) < c.blackout);
                let shedding = p.last_report.is_some_and(|(_, r)| r.shedding);
                let base = self.a58(now, p).unwrap_or(mean_base);
                let (mut latency_factor, mut error_factor) = (1.0, 1.0);
                if let Some(v) = &p.consumers {
                    let age = now.saturating_sub(v.at);
                    if age <= c.weight_expiry {
                        let keep = fade(age, c.consumer_decay);
                        if let (Some(g), true) = (geo, v.latency_us > 0.0) {
                            let raw =
                                (g / v.latency_us).clamp(1.0 / c.latency_clamp, c.latency_clamp);
                            // Stale opinions fade back to neutral (in log space).
                            latency_factor = (raw.ln() * keep).exp();
                        }
                        error_factor = 1.0 / (1.0 + c.consumer_error_penalty * v.failures * keep);
                    }
                }
                let weight = if dead {
                    0.0
                } else {
                    sane(base * latency_factor * error_factor)
                };
                WeightView {
                    producer: id,
                    weight,
                    base,
                    latency_factor,
                    error_factor,
                    blackout,
                    dead,
                    shedding,
                    active_leases: p.active_leases,
                }
            })
            .collect()
    }

    /// The weight of one producer (0 when dead or unknown).
    pub fn weight(&self, now: Duration, id: ProducerId) -> f64 {
        self.view(now)
            .into_iter()
            .find(|v| v.producer == id)
            .map_or(0.0, |v| v.weight)
    }

    /// Picks up to `count` distinct live, non-shedding producers not in `avoid`, and
    /// counts a lease on each.
    ///
    /// Weighted power of two choices: two producers are drawn at random in proportion
    /// to their weights and the one with fewer active leases per unit of weight wins.
    /// The draw spreads simultaneous requests; the lease count corrects the draw's
    /// luck at once (each grant raises the winner's count), so a burst of requests
    /// does not herd onto the heaviest producer.
    pub fn select(&mut self, now: Duration, count: usize, avoid: &[ProducerId]) -> Vec<ProducerId> {
        let mut cands: Vec<(ProducerId, f64)> = self
            .view(now)
            .into_iter()
            .filter(|v| !v.dead && !v.shedding && v.weight > 0.0 && !avoid.contains(&v.producer))
            .map(|v| (v.producer, v.weight))
            .collect();
        let mut picked = Vec::new();
        while picked.len() < count && !cands.is_empty() {
            let a = self.draw(&cands);
            let b = self.draw(&cands);
            let score = |i: usize, s: &Self| {
                let (id, w) = cands[i];
                (s.producers[&id].active_leases as f64 + 1.0) / w
            };
            let win = if score(b, self) < score(a, self) {
                b
            } else {
                a
            };
            let (id, _) = cands.swap_remove(win);
            if let Some(p) = self.producers.get_mut(&id) {
                p.active_leases += 1;
            }
            picked.push(id);
        }
        picked
    }

    fn draw(&mut self, cands: &[(ProducerId, f64)]) -> usize {
        let total: f64 = cands.iter().map(|c| c.1).sum();
        let mut x = self.rng.random::<f64>() * total;
        for (i, (_, w)) in cands.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        cands.len() - 1
    }

    /// Applies one recorded event; a `Select` returns its picks.
    pub fn apply(&mut self, ev: &TimedEvent) -> Option<Vec<ProducerId>> {
        match &ev.event {
            Event::Add(id) => self.add(ev.at, *id),
            Event::Remove(id) => {
                self.remove(*id);
            }
            Event::Producer(id, r) => self.producer_report(ev.at, *id, *r),
            Event::Consumer(id, r) => self.consumer_report(ev.at, *id, *r),
            Event::Select { count, avoid } => return Some(self.select(ev.at, *count, avoid)),
            Event::Release(id) => self.release(*id),
            Event::Acquire(id) => self.acquire(*id),
        }
        None
    }
}

/// Replays a trace from a fresh engine; returns every selection's picks, in order.
pub fn replay(config: WeightConfig, trace: &[TimedEvent]) -> Vec<(Duration, Vec<ProducerId>)> {
    let mut w = Weights::new(config);
    trace
        .iter()
        .filter_map(|ev| w.apply(ev).map(|p| (ev.at, p)))
        .collect()
}

fn sane(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 {
        x
    } else {
        0.0
    }
}

/// exp(-age/tau): how much of an old average survives `age`.
fn fade(age: Duration, tau: Duration) -> f64 {
    if tau.is_zero() {
        return 0.0;
    }
    (-age.as_secs_f64() / tau.as_secs_f64()).exp()
}
