//! Interned, mergeable aggregates: per application type, failures and exposure of
//! each attribute=value, each pair, and each full combination (with a time series).
//!
//! Sums are integers (exposure in millionths of its unit), so merging is exact,
//! associative and commutative: two ingesting nodes' states merged equal one node
//! fed all the events ([`Aggregates::merge`], [`Aggregates::canonical`]).

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::event::{Event, EventError, EventKind, Exposure, Limits, Reason};

/// An interned `name=value`: the name id in the high 32 bits, the value id (unique per
/// name) in the low 32 bits. Sorting attributes by it sorts them by name id.
pub(crate) type Attr = u64;

/// Failures and exposure of one cell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Failure events.
    pub failures: u64,
    /// Instance-hours × 10⁶.
    pub hours: u64,
    /// Launches × 10⁶.
    pub launches: u64,
}

impl Counts {
    /// Adds `other` into `self`, saturating (about 18 million lines at the largest
    /// exposure a line may carry would overflow a `u64`).
    pub fn add(&mut self, other: &Counts) {
        self.failures = self.failures.saturating_add(other.failures);
        self.hours = self.hours.saturating_add(other.hours);
        self.launches = self.launches.saturating_add(other.launches);
    }

    fn of(kind: &EventKind) -> Counts {
        match kind {
            EventKind::Failure(_) => Counts {
                failures: 1,
                ..Counts::default()
            },
            EventKind::Exposure(Exposure::Hours(h)) => Counts {
                hours: *h,
                ..Counts::default()
            },
            EventKind::Exposure(Exposure::Launches(l)) => Counts {
                launches: *l,
                ..Counts::default()
            },
        }
    }
}

/// A full combination's counts and their series over time buckets.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FullCell {
    pub(crate) counts: Counts,
    pub(crate) series: BTreeMap<i64, Counts>,
}

/// One application type's cells.
#[derive(Debug, Clone, Default)]
pub(crate) struct AppAgg {
    pub(crate) total: Counts,
    pub(crate) singles: FxHashMap<Attr, Counts>,
    pub(crate) pairs: FxHashMap<(Attr, Attr), Counts>,
    pub(crate) full: FxHashMap<Box<[Attr]>, FullCell>,
    pub(crate) kinds: BTreeMap<String, u64>,
}

/// Strings to ids, bounded by [`Limits`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Interner {
    app_types: FxHashMap<Box<str>, u32>,
    pub(crate) app_type_names: Vec<Box<str>>,
    names: FxHashMap<Box<str>, u32>,
    pub(crate) name_strs: Vec<Box<str>>,
    values: Vec<FxHashMap<Box<str>, u32>>,
    pub(crate) value_strs: Vec<Vec<Box<str>>>,
}

impl Interner {
    fn app_type(&mut self, s: &str, limits: Option<&Limits>) -> Result<u32, EventError> {
        if let Some(&id) = self.app_types.get(s) {
            return Ok(id);
        }
        if let Some(l) = limits {
            if self.app_type_names.len() >= l.max_app_types {
                return Err(EventError::AttributeExplosion {
                    what: "app types".into(),
                    limit: l.max_app_types,
                });
            }
        }
        let id = self.app_type_names.len() as u32;
        self.app_types.insert(s.into(), id);
        self.app_type_names.push(s.into());
        Ok(id)
    }

    /// Whether interning `resources` would pass the limits (checked before any is
    /// interned, so a refused event leaves nothing behind).
    fn check(&self, resources: &[(String, String)], limits: &Limits) -> Result<(), EventError> {
        let mut new_names = 0;
        for (k, v) in resources {
            match self.names.get(k.as_str()) {
                None => {
                    new_names += 1;
                    if limits.max_values_per_attribute == 0 {
                        return Err(explosion_values(k, limits));
                    }
                }
                Some(&n) => {
                    let vals = &self.values[n as usize];
                    if !vals.contains_key(v.as_str())
                        && vals.len() >= limits.max_values_per_attribute
                    {
                        return Err(explosion_values(k, limits));
                    }
                }
            }
        }
        if self.name_strs.len() + new_names > limits.max_attribute_names {
            return Err(EventError::AttributeExplosion {
                what: "attribute names".into(),
                limit: limits.max_attribute_names,
            });
        }
        Ok(())
    }

    pub(crate) fn attr(&mut self, k: &str, v: &str) -> Attr {
        let n = match self.names.get(k) {
            Some(&n) => n,
            None => {
                let n = self.name_strs.len() as u32;
                self.names.insert(k.into(), n);
                self.name_strs.push(k.into());
                self.values.push(FxHashMap::default());
                self.value_strs.push(Vec::new());
                n
            }
        };
        let vals = &mut self.values[n as usize];
        let id = match vals.get(v) {
            Some(&id) => id,
            None => {
                let id = self.value_strs[n as usize].len() as u32;
                vals.insert(v.into(), id);
                self.value_strs[n as usize].push(v.into());
                id
            }
        };
        (u64::from(n) << 32) | u64::from(id)
    }

    pub(crate) fn name(&self, a: Attr) -> &str {
        &self.name_strs[(a >> 32) as usize]
    }

    pub(crate) fn value(&self, a: Attr) -> &str {
        &self.value_strs[(a >> 32) as usize][(a & 0xffff_ffff) as usize]
    }
}

fn explosion_values(k: &str, limits: &Limits) -> EventError {
    EventError::AttributeExplosion {
        what: format!(
            "values of attribute `{}`",
            k.chars().take(64).collect::<String>()
        ),
        limit: limits.max_values_per_attribute,
    }
}

/// The state of an ingesting node: every application type's cells, the interner, and
/// the counts of refused lines by reason.
#[derive(Debug, Clone)]
pub struct Aggregates {
    pub(crate) interner: Interner,
    pub(crate) apps: Vec<AppAgg>,
    pub(crate) bad: [u64; Reason::ALL.len()],
    pub(crate) accepted: u64,
    pub(crate) bucket_secs: i64,
    limits: Limits,
}

/// The default width of a time bucket (the rate-over-time series), in seconds.
pub const DEFAULT_BUCKET_SECS: i64 = 3600;

impl Default for Aggregates {
    fn default() -> Self {
        Self::new(Limits::default(), DEFAULT_BUCKET_SECS)
    }
}

impl Aggregates {
    /// Empty aggregates with these limits and a time bucket of `bucket_secs`.
    pub fn new(limits: Limits, bucket_secs: i64) -> Self {
        Self {
            interner: Interner::default(),
            apps: Vec::new(),
            bad: [0; Reason::ALL.len()],
            accepted: 0,
            bucket_secs: bucket_secs.max(1),
            limits,
        }
    }

    /// The limits events are checked against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Events accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    /// Refused lines, by reason.
    pub fn bad_lines(&self) -> BTreeMap<Reason, u64> {
        Reason::ALL
            .into_iter()
            .filter(|r| self.bad[r.index()] > 0)
            .map(|r| (r, self.bad[r.index()]))
            .collect()
    }

    /// Counts one refused line.
    pub fn count_bad(&mut self, reason: Reason) {
        self.bad[reason.index()] += 1;
    }

    /// Checks `event` against the state's bounds (new attribute names and values, new
    /// application types) without changing anything.
    pub fn check(&self, event: &Event) -> Result<(), EventError> {
        if !self
            .interner
            .app_types
            .contains_key(event.app_type.as_str())
            && self.interner.app_type_names.len() >= self.limits.max_app_types
        {
            return Err(EventError::AttributeExplosion {
                what: "app types".into(),
                limit: self.limits.max_app_types,
            });
        }
        self.interner.check(&event.resources, &self.limits)
    }

    /// Checks `event` against the bounds and interns its app type, names and values
    /// (without counting it): what the durable path does before logging an event.
    pub fn admit(&mut self, event: &Event) -> Result<(), EventError> {
        self.check(event)?;
        self.interner
            .app_type(&event.app_type, None)
            .expect("unbounded interning cannot fail");
        for (k, v) in &event.resources {
            self.interner.attr(k, v);
        }
        Ok(())
    }

    /// Adds a validated event: checks the bounds, interns, and adds it to every cell
    /// it belongs to. A refused event changes nothing but the bad-line counter.
    pub fn add(&mut self, event: &Event) -> Result<(), EventError> {
        if let Err(e) = self.check(event) {
            self.count_bad(e.reason());
            return Err(e);
        }
        self.add_unchecked(event);
        Ok(())
    }

    /// Adds an event without checking bounds (replay of events already accepted).
    pub(crate) fn add_unchecked(&mut self, event: &Event) {
        let app = self
            .interner
            .app_type(&event.app_type, None)
            .expect("unbounded interning cannot fail") as usize;
        let mut attrs: Vec<Attr> = event
            .resources
            .iter()
            .map(|(k, v)| self.interner.attr(k, v))
            .collect();
        attrs.sort_unstable();
        let counts = Counts::of(&event.kind);
        let bucket = event.time.div_euclid(self.bucket_secs) * self.bucket_secs;
        if self.apps.len() <= app {
            self.apps.resize_with(app + 1, AppAgg::default);
        }
        let agg = &mut self.apps[app];
        agg.add(&attrs, &counts, bucket);
        if let EventKind::Failure(kind) = &event.kind {
            match agg.kinds.get_mut(kind.as_str()) {
                Some(n) => *n += 1,
                None => {
                    agg.kinds.insert(kind.clone(), 1);
                }
            }
        }
        self.accepted += 1;
    }

    /// Adds every cell of `other` into `self` (ids translated through strings).
    pub fn merge(&mut self, other: &Aggregates) {
        for (i, b) in other.bad.iter().enumerate() {
            self.bad[i] += b;
        }
        self.accepted += other.accepted;
        for (oapp, oagg) in other.apps.iter().enumerate() {
            let name = &other.interner.app_type_names[oapp];
            let app = self
                .interner
                .app_type(name, None)
                .expect("unbounded interning cannot fail") as usize;
            if self.apps.len() <= app {
                self.apps.resize_with(app + 1, AppAgg::default);
            }
            let mut tr = |a: Attr| {
                self.interner
                    .attr(other.interner.name(a), other.interner.value(a))
            };
            let mut singles = Vec::with_capacity(oagg.singles.len());
            for (a, c) in &oagg.singles {
                singles.push((tr(*a), *c));
            }
            let mut pairs = Vec::with_capacity(oagg.pairs.len());
            for ((a, b), c) in &oagg.pairs {
                let (x, y) = (tr(*a), tr(*b));
                pairs.push(((x.min(y), x.max(y)), *c));
            }
            let mut full = Vec::with_capacity(oagg.full.len());
            for (k, cell) in &oagg.full {
                let mut key: Vec<Attr> = k.iter().map(|a| tr(*a)).collect();
                key.sort_unstable();
                full.push((key.into_boxed_slice(), cell));
            }
            let agg = &mut self.apps[app];
            agg.total.add(&oagg.total);
            for (a, c) in singles {
                agg.singles.entry(a).or_default().add(&c);
            }
            for (k, c) in pairs {
                agg.pairs.entry(k).or_default().add(&c);
            }
            for (k, cell) in full {
                let mine = agg.full.entry(k).or_default();
                mine.counts.add(&cell.counts);
                for (t, c) in &cell.series {
                    mine.series.entry(*t).or_default().add(c);
                }
            }
            for (k, n) in &oagg.kinds {
                *agg.kinds.entry(k.clone()).or_default() += n;
            }
        }
    }

    /// The state keyed by strings, independent of interning order: equal for equal
    /// event multisets, and the form checkpoints are stored in.
    pub fn canonical(&self) -> Canonical {
        let it = &self.interner;
        let attrs = |k: &[Attr]| -> Vec<(String, String)> {
            let mut v: Vec<(String, String)> = k
                .iter()
                .map(|a| (it.name(*a).to_string(), it.value(*a).to_string()))
                .collect();
            v.sort();
            v
        };
        let mut apps = BTreeMap::new();
        for (i, agg) in self.apps.iter().enumerate() {
            let mut c = CanonicalApp {
                total: agg.total,
                kinds: agg.kinds.clone(),
                ..CanonicalApp::default()
            };
            for (a, n) in &agg.singles {
                c.singles.insert(attrs(&[*a]), *n);
            }
            for ((a, b), n) in &agg.pairs {
                c.pairs.insert(attrs(&[*a, *b]), *n);
            }
            for (k, cell) in &agg.full {
                c.full.insert(
                    attrs(k),
                    CanonicalFull {
                        counts: cell.counts,
                        series: cell.series.iter().map(|(t, n)| (*t, *n)).collect(),
                    },
                );
            }
            apps.insert(it.app_type_names[i].to_string(), c);
        }
        Canonical {
            apps,
            bad: self
                .bad_lines()
                .into_iter()
                .map(|(r, n)| (r.as_str().to_string(), n))
                .collect(),
            accepted: self.accepted,
            bucket_secs: self.bucket_secs,
        }
    }

    /// Rebuilds aggregates from their canonical form.
    pub fn from_canonical(c: &Canonical, limits: Limits) -> Self {
        let mut s = Self::new(limits, c.bucket_secs);
        s.accepted = c.accepted;
        for (name, n) in &c.bad {
            if let Some(r) = Reason::from_name(name) {
                s.bad[r.index()] += n;
            }
        }
        for (app_name, capp) in &c.apps {
            let app = s
                .interner
                .app_type(app_name, None)
                .expect("unbounded interning cannot fail") as usize;
            if s.apps.len() <= app {
                s.apps.resize_with(app + 1, AppAgg::default);
            }
            let mut intern = |kv: &[(String, String)]| -> Vec<Attr> {
                let mut v: Vec<Attr> = kv.iter().map(|(k, v)| s.interner.attr(k, v)).collect();
                v.sort_unstable();
                v
            };
            let singles: Vec<_> = capp.singles.iter().map(|(k, n)| (intern(k), *n)).collect();
            let pairs: Vec<_> = capp.pairs.iter().map(|(k, n)| (intern(k), *n)).collect();
            let full: Vec<_> = capp.full.iter().map(|(k, f)| (intern(k), f)).collect();
            let agg = &mut s.apps[app];
            agg.total = capp.total;
            agg.kinds = capp.kinds.clone();
            for (k, n) in singles {
                agg.singles.insert(k[0], n);
            }
            for (k, n) in pairs {
                agg.pairs.insert((k[0], k[1]), n);
            }
            for (k, f) in full {
                agg.full.insert(
                    k.into_boxed_slice(),
                    FullCell {
                        counts: f.counts,
                        series: f.series.iter().copied().collect(),
                    },
                );
            }
        }
        s
    }
}

impl AppAgg {
    fn add(&mut self, attrs: &[Attr], counts: &Counts, bucket: i64) {
        self.total.add(counts);
        for (i, a) in attrs.iter().enumerate() {
            self.singles.entry(*a).or_default().add(counts);
            for b in &attrs[i + 1..] {
                self.pairs.entry((*a, *b)).or_default().add(counts);
            }
        }
        let cell = match self.full.get_mut(attrs) {
            Some(c) => c,
            None => self.full.entry(attrs.into()).or_default(),
        };
        cell.counts.add(counts);
        cell.series.entry(bucket).or_default().add(counts);
    }
}

/// One application type in [`Canonical`] form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanonicalApp {
    /// All of the type's events.
    pub total: Counts,
    /// Failures by kind.
    pub kinds: BTreeMap<String, u64>,
    /// Each attribute=value.
    pub singles: BTreeMap<Vec<(String, String)>, Counts>,
    /// Each pair.
    pub pairs: BTreeMap<Vec<(String, String)>, Counts>,
    /// Each full combination.
    pub full: BTreeMap<Vec<(String, String)>, CanonicalFull>,
}

/// A full combination in [`Canonical`] form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanonicalFull {
    /// Its counts.
    pub counts: Counts,
    /// Counts per time bucket (bucket start, seconds since the epoch).
    pub series: Vec<(i64, Counts)>,
}

/// [`Aggregates`] keyed by strings: comparable across nodes, serialisable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canonical {
    /// Per application type.
    pub apps: BTreeMap<String, CanonicalApp>,
    /// Refused lines by reason name.
    pub bad: BTreeMap<String, u64>,
    /// Accepted events.
    pub accepted: u64,
    /// The time bucket width, in seconds.
    pub bucket_secs: i64,
}
