//! The agent's decisions: leases, renewals, report verification, producer registry.
//! Synchronous and clock-free: every call takes the wall-clock time in milliseconds.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::lease::{ClusterKey, LeaseClaims, LeaseToken};
use crate::shed::{Indicators, Verdict};
use crate::weights::{
    ConsumerId, Event, ProducerId, ProducerReport, TimedEvent, WeightConfig, Weights,
};
use crate::wire::{
    AgentStatus, Lease, LeaseRequest, LeaseResponse, Peer, ProducerStatus, ProducerView, Refusal,
};

/// Tuning of an agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The agent's id (in lease tokens).
    pub agent: u32,
    /// Lease length.
    pub lease_ttl: Duration,
    /// New leases a request may ask for.
    pub max_want: u16,
    /// The weight engine's tuning.
    pub weights: WeightConfig,
    /// Refuse renewals on producers holding more than twice their weight's share of
    /// the leases (off only to compare against no rebalancing at all).
    pub rebalance_leases: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            agent: 0,
            lease_ttl: Duration::from_secs(10),
            max_want: 16,
            weights: WeightConfig::default(),
            rebalance_leases: true,
        }
    }
}

/// A producer as the registry file keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    /// Its id.
    pub id: ProducerId,
    /// Where it serves.
    pub addr: SocketAddr,
    /// Where it gossips.
    pub gossip: SocketAddr,
}

#[derive(Debug, Clone)]
struct Known {
    reg: Registered,
    indicators: Indicators,
    report: ProducerReport,
    shed_total: u64,
    last_verdict: Option<Verdict>,
}

/// The agent's state.
#[derive(Debug)]
pub struct AgentCore {
    config: AgentConfig,
    key: ClusterKey,
    weights: Weights,
    producers: BTreeMap<ProducerId, Known>,
    /// Leases out, by expiry: (expires_ms, lease id) -> producer.
    leases: BTreeMap<(u64, u64), ProducerId>,
    /// Lease ids that already carried a report (one report per lease token), kept for
    /// as long as the token could still carry one.
    reported: IdsUntil,
    /// Tokens already renewed (replaced by a new one), until they expire: a token is
    /// renewed once, whether it is sent twice in one request or again after a lost
    /// answer.
    renewed: IdsUntil,
    /// The first lease id this agent issued: lower ids are from before a restart.
    first_lease: u64,
    next_lease: u64,
    stats: AgentStatus,
    trace: Option<Vec<TimedEvent>>,
    decisions: Vec<(Duration, Vec<ProducerId>)>,
}

/// What the caller must do after a call besides answering.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Nothing.
    None,
    /// The registry changed: persist it durably before answering.
    Persist(Vec<Registered>),
}

/// Ids remembered until a time, forgotten after it.
#[derive(Debug, Default)]
struct IdsUntil {
    ids: HashSet<u64>,
    by_time: BTreeSet<(u64, u64)>,
}

impl IdsUntil {
    /// Remembers `id` until `until_ms`; false if it already was.
    fn insert(&mut self, id: u64, until_ms: u64) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.by_time.insert((until_ms, id));
        true
    }

    fn contains(&self, id: u64) -> bool {
        self.ids.contains(&id)
    }

    /// Forgets the ids whose time is before `now_ms`.
    fn prune(&mut self, now_ms: u64) {
        while let Some(&(until, id)) = self.by_time.first() {
            if until >= now_ms {
                break;
            }
            self.by_time.pop_first();
            self.ids.remove(&id);
        }
    }
}

fn at(now_ms: u64) -> Duration {
    Duration::from_millis(now_ms)
}

impl AgentCore {
    /// An agent with the producers of a persisted registry (alive until `dead_after`
    /// without a report, like any newly added producer).
    pub fn new(config: AgentConfig, key: ClusterKey, now_ms: u64, registry: &[Registered]) -> Self {
        let mut weights = Weights::new(config.weights);
        let mut producers = BTreeMap::new();
        for reg in registry {
            weights.add(at(now_ms), reg.id);
            producers.insert(
                reg.id,
                Known {
                    reg: *reg,
                    indicators: Indicators::default(),
                    report: ProducerReport::default(),
                    shed_total: 0,
                    last_verdict: None,
                },
            );
        }
        let stats = AgentStatus {
            agent: config.agent,
            ..AgentStatus::default()
        };
        // Lease ids start at the start time in µs: unique across restarts.
        let first_lease = now_ms.saturating_mul(1000);
        Self {
            first_lease,
            next_lease: first_lease,
            config,
            key,
            weights,
            producers,
            leases: BTreeMap::new(),
            reported: IdsUntil::default(),
            renewed: IdsUntil::default(),
            stats,
            trace: None,
            decisions: Vec::new(),
        }
    }

    /// Records every weight-engine input from now on, starting with the producers
    /// already known (see [`take_trace`](Self::take_trace)). Record from the start
    /// (right after [`new`](Self::new)) for a trace that replays exactly.
    pub fn record(&mut self, now_ms: u64) {
        self.trace = Some(Vec::new());
        self.decisions = Vec::new();
        let known: Vec<ProducerId> = self.producers.keys().copied().collect();
        for id in known {
            self.log(now_ms, Event::Add(id));
        }
    }

    /// The recorded weight-engine inputs, and the selections made, so far.
    pub fn take_trace(&mut self) -> (Vec<TimedEvent>, Vec<(Duration, Vec<ProducerId>)>) {
        (
            self.trace.as_mut().map(std::mem::take).unwrap_or_default(),
            std::mem::take(&mut self.decisions),
        )
    }

    /// The weight engine's configuration (to replay a trace with).
    pub fn weight_config(&self) -> WeightConfig {
        *self.weights.config()
    }

    fn log(&mut self, now_ms: u64, event: Event) {
        if let Some(t) = &mut self.trace {
            t.push(TimedEvent {
                at: at(now_ms),
                event,
            });
        }
    }

    /// The registry as persisted.
    pub fn registry(&self) -> Vec<Registered> {
        self.producers.values().map(|k| k.reg).collect()
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some((&(exp, id), &p)) = self.leases.first_key_value() {
            if exp > now_ms {
                break;
            }
            self.leases.remove(&(exp, id));
            self.weights.release(p);
            self.log(now_ms, Event::Release(p));
        }
        self.reported.prune(now_ms);
        self.renewed.prune(now_ms);
    }

    fn issue(&mut self, now_ms: u64, consumer: ConsumerId, producer: ProducerId) -> Option<Lease> {
        let addr = self.producers.get(&producer)?.reg.addr;
        self.next_lease += 1;
        let claims = LeaseClaims {
            id: self.next_lease,
            agent: self.config.agent,
            consumer,
            producer,
            expires_ms: now_ms.saturating_add(self.ttl_ms()),
        };
        self.leases.insert((claims.expires_ms, claims.id), producer);
        Some(Lease {
            token: LeaseToken::sign(&self.key, claims),
            addr,
            latency_hint_us: self
                .weights
                .latency_hint(at(now_ms), producer)
                .unwrap_or(0.0),
        })
    }

    fn end(&mut self, now_ms: u64, claims: &LeaseClaims) {
        if self
            .leases
            .remove(&(claims.expires_ms, claims.id))
            .is_some()
        {
            self.weights.release(claims.producer);
            self.log(now_ms, Event::Release(claims.producer));
        }
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.config.lease_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a token is genuine, this consumer's and was issued for a producer of
    /// this agent.
    fn check(&self, consumer: ConsumerId, t: &LeaseToken) -> Result<(), Refusal> {
        if !t.verify(&self.key) {
            return Err(Refusal::Forged);
        }
        if t.claims.agent != self.config.agent {
            return Err(Refusal::OtherAgent);
        }
        if t.claims.consumer != consumer {
            return Err(Refusal::NotYours);
        }
        Ok(())
    }

    fn self_balancing(&self, p: ProducerId) -> bool {
        self.producers.get(&p).is_some_and(|k| {
            matches!(
                k.last_verdict,
                Some(Verdict::Warming | Verdict::Shed | Verdict::RateLimited)
            )
        })
    }

    /// Serves a lease request.
    pub fn lease(&mut self, now_ms: u64, req: &LeaseRequest) -> LeaseResponse {
        self.expire(now_ms);
        let now = at(now_ms);
        let mut resp = LeaseResponse::default();
        // Reports first, so this request's selection already sees them. A report is
        // taken only with a genuine lease of this consumer on that producer that has
        // not expired more than a lease length ago, once per lease.
        let ttl = self.ttl_ms();
        for (token, report) in &req.reports {
            let reportable_until = token.claims.expires_ms.saturating_add(ttl);
            let ok = self.check(req.consumer, token).is_ok()
                && reportable_until >= now_ms
                && self.weights.contains(token.claims.producer)
                && self.reported.insert(token.claims.id, reportable_until);
            if ok {
                self.weights
                    .consumer_report(now, token.claims.producer, *report);
                self.log(now_ms, Event::Consumer(token.claims.producer, *report));
                resp.reports_accepted += 1;
            } else {
                resp.reports_rejected += 1;
            }
        }
        for token in &req.release {
            if self.check(req.consumer, token).is_ok() {
                self.end(now_ms, &token.claims);
            }
        }
        let views = self.weights.view(now);
        // A shedding producer keeps its leases (it closes the connections it chose
        // itself); it only gets no new ones.
        let view: BTreeMap<ProducerId, (bool, bool)> = views
            .iter()
            .map(|v| (v.producer, (v.dead || v.weight <= 0.0, v.shedding)))
            .collect();
        // Lease shares against weight shares, among the producers that can take leases.
        let live = views
            .iter()
            .filter(|v| !v.dead && !v.shedding && v.weight > 0.0);
        let total_w: f64 = live.clone().map(|v| v.weight).sum();
        let total_l: u64 = live.clone().map(|v| v.active_leases).sum();
        let mut leases_of: BTreeMap<ProducerId, (u64, f64)> = live
            .map(|v| (v.producer, (v.active_leases, v.weight)))
            .collect();
        for token in &req.renew {
            let c = token.claims;
            let verdict = self.check(req.consumer, token).and_then(|()| {
                if c.expires_ms <= now_ms || self.renewed.contains(c.id) {
                    return Err(Refusal::Expired);
                }
                // Not out, not renewed, issued by this run of the agent: it was given
                // back or refused (a token from before a restart is adopted below).
                if c.id >= self.first_lease && !self.leases.contains_key(&(c.expires_ms, c.id)) {
                    return Err(Refusal::Expired);
                }
                match view.get(&c.producer) {
                    None | Some((true, _)) => Err(Refusal::ProducerGone),
                    Some(_) if req.avoid.contains(&c.producer) => Err(Refusal::ProducerShedding),
                    // A producer whose own shedder is over its threshold moves its
                    // connections itself; refusing renewals too would move them twice.
                    Some(_) if !self.config.rebalance_leases || self.self_balancing(c.producer) => {
                        Ok(())
                    }
                    Some(_) => match leases_of.get_mut(&c.producer) {
                        Some((n, w))
                            if *n >= 1
                                && total_l > 0
                                && (*n as f64 / total_l as f64) > 2.0 * *w / total_w =>
                        {
                            *n -= 1;
                            Err(Refusal::Rebalance)
                        }
                        _ => Ok(()),
                    },
                }
            });
            match verdict {
                Ok(()) => {
                    // A lease issued before an agent restart is counted from now on.
                    if self.leases.remove(&(c.expires_ms, c.id)).is_none() {
                        self.weights.acquire(c.producer);
                        self.log(now_ms, Event::Acquire(c.producer));
                    }
                    self.renewed.insert(c.id, c.expires_ms);
                    if let Some(l) = self.issue(now_ms, req.consumer, c.producer) {
                        resp.renewed.push(l);
                        self.stats.renewed += 1;
                    }
                }
                Err(why) => {
                    if !matches!(
                        why,
                        Refusal::Forged | Refusal::NotYours | Refusal::OtherAgent
                    ) {
                        self.end(now_ms, &c);
                    }
                    resp.refused.push((*token, why));
                    self.stats.refused += 1;
                }
            }
        }
        let want = usize::from(req.want.min(self.config.max_want));
        if want > 0 {
            let mut avoid = req.avoid.clone();
            avoid.extend(resp.renewed.iter().map(|l| l.token.claims.producer));
            avoid.extend(resp.refused.iter().map(|(t, _)| t.claims.producer));
            // Logged before it runs, as replay applies it.
            self.log(
                now_ms,
                Event::Select {
                    count: want,
                    avoid: avoid.clone(),
                },
            );
            let picks = self.weights.select(now, want, &avoid);
            if self.trace.is_some() {
                self.decisions.push((now, picks.clone()));
            }
            for p in picks {
                if let Some(l) = self.issue(now_ms, req.consumer, p) {
                    resp.granted.push(l);
                    self.stats.granted += 1;
                }
            }
        }
        self.stats.reports_accepted += u64::from(resp.reports_accepted);
        self.stats.reports_rejected += u64::from(resp.reports_rejected);
        resp
    }

    /// Takes a producer's (already verified) status; answers its gossip peers and
    /// whether the registry changed.
    pub fn producer(&mut self, now_ms: u64, s: &ProducerStatus) -> (Vec<Peer>, Effect) {
        self.expire(now_ms);
        let reg = Registered {
            id: s.id,
            addr: s.addr,
            gossip: s.gossip,
        };
        if s.leaving {
            let was = self.producers.remove(&s.id).is_some();
            self.weights.remove(s.id);
            // Its leases go with it: if it registers again, renewals of them are
            // refused rather than found without being counted.
            self.leases.retain(|_, p| *p != s.id);
            self.log(now_ms, Event::Remove(s.id));
            let fx = if was {
                Effect::Persist(self.registry())
            } else {
                Effect::None
            };
            return (Vec::new(), fx);
        }
        let changed = self.producers.get(&s.id).is_none_or(|k| k.reg != reg);
        self.producers.insert(
            s.id,
            Known {
                reg,
                indicators: s.indicators,
                report: s.report,
                shed_total: s.shed_total,
                last_verdict: s.last_verdict,
            },
        );
        self.weights.producer_report(at(now_ms), s.id, s.report);
        self.log(now_ms, Event::Producer(s.id, s.report));
        let dead: HashSet<ProducerId> = self
            .weights
            .view(at(now_ms))
            .into_iter()
            .filter(|v| v.dead)
            .map(|v| v.producer)
            .collect();
        let peers = self
            .producers
            .values()
            .filter(|k| k.reg.id != s.id && !dead.contains(&k.reg.id))
            .map(|k| Peer {
                id: k.reg.id,
                gossip: k.reg.gossip,
            })
            .collect();
        let fx = if changed {
            Effect::Persist(self.registry())
        } else {
            Effect::None
        };
        (peers, fx)
    }

    /// A producer status with a bad tag was received.
    pub fn forged_status(&mut self) {
        self.stats.forged_status += 1;
    }

    /// Adds transport-level counters (busy answers, malformed frames) to the status.
    pub fn status(&mut self, now_ms: u64, busy: u64, malformed: u64) -> AgentStatus {
        self.expire(now_ms);
        let mut s = self.stats.clone();
        s.busy = busy;
        s.malformed = malformed;
        s.active_leases = self.leases.len() as u64;
        s.producers = self
            .weights
            .view(at(now_ms))
            .into_iter()
            .filter_map(|w| {
                let k = self.producers.get(&w.producer)?;
                Some(ProducerView {
                    addr: k.reg.addr,
                    indicators: k.indicators,
                    report: k.report,
                    shed_total: k.shed_total,
                    last_verdict: k.last_verdict,
                    weight: w,
                })
            })
            .collect();
        s
    }
}
