//! The input format (one JSON object per line) and its validation.
//!
//! ```text
//! {"type":"failure","time":"2026-12-01T10:00:00Z","app":"billing","app_type":"web","kind":"crash","resources":{"kernel":"6.1.12"}}
//! {"type":"exposure","time":"2026-12-01T10:00:00Z","app":"billing","app_type":"web","resources":{"kernel":"6.1.12"},"hours":12.5}
//! ```
//!
//! Parsing is sans-I/O: [`parse_line`] takes the line, the [`Limits`] and the time to
//! judge clock skew against, and returns a validated [`Event`] or a typed
//! [`EventError`] whose [`Reason`] is what the bad-line counters are keyed by.

use std::borrow::Cow;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

mod error;
pub use error::{EventError, Reason};

/// Exposure amounts are kept in millionths of a unit so that sums are exact and
/// merging is associative.
pub const EXPOSURE_SCALE: f64 = 1_000_000.0;

/// Bounds on what one line (and the whole state) may hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Longest accepted line, in bytes.
    pub max_line_bytes: usize,
    /// Most resource attributes on one event.
    pub max_attributes: usize,
    /// Longest app, app type, kind, attribute name or value, in bytes.
    pub max_value_bytes: usize,
    /// Most distinct attribute names over the whole state.
    pub max_attribute_names: usize,
    /// Most distinct values of one attribute over the whole state.
    pub max_values_per_attribute: usize,
    /// Most distinct application types over the whole state.
    pub max_app_types: usize,
    /// Largest exposure of one event (hours or launches).
    pub max_exposure: f64,
    /// How far in the future of "now" an event's time may be, in seconds.
    pub max_future_secs: i64,
    /// How far in the past of "now" an event's time may be, in seconds.
    pub max_age_secs: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line_bytes: 64 * 1024,
            max_attributes: 16,
            max_value_bytes: 256,
            max_attribute_names: 64,
            max_values_per_attribute: 10_000,
            max_app_types: 1_000,
            max_exposure: 1.0e6,
            max_future_secs: 15 * 60,
            max_age_secs: 400 * 24 * 3600,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// A failure (crash, hang, malfunction...) of the given free-text kind.
    Failure(String),
    /// Exposure: how much the combination ran.
    Exposure(Exposure),
}

/// An amount of exposure, in millionths of its unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Instance-hours (× 10⁶).
    Hours(u64),
    /// Launches (× 10⁶).
    Launches(u64),
}

/// A validated event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Failure or exposure.
    pub kind: EventKind,
    /// Seconds since the Unix epoch.
    pub time: i64,
    /// The application.
    pub app: String,
    /// Its type (the unit of analysis).
    pub app_type: String,
    /// Resource attributes, sorted by name, names unique.
    pub resources: Vec<(String, String)>,
}

/// The resources map, kept as a list in input order (duplicates found later).
struct Resources<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'de: 'a, 'a> Deserialize<'de> for Resources<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Resources<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut v = Vec::with_capacity(map.size_hint().unwrap_or(8).min(32));
                while let Some(entry) = map.next_entry::<Cow<'a, str>, Cow<'a, str>>()? {
                    v.push(entry);
                }
                Ok(Resources(v))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// The fast path: the shape every well-formed line has.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow)]
    time: Cow<'a, str>,
    #[serde(borrow)]
    app: Cow<'a, str>,
    #[serde(borrow)]
    app_type: Cow<'a, str>,
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    resources: Resources<'a>,
    #[serde(default)]
    hours: Option<f64>,
    #[serde(default)]
    launches: Option<f64>,
}

/// Parses and validates one line (without its newline). `now` is the ingesting
/// clock in seconds since the epoch, against which clock skew is judged.
pub fn parse_line(line: &[u8], limits: &Limits, now: i64) -> Result<Event, EventError> {
    if line.len() > limits.max_line_bytes {
        return Err(EventError::LineTooLong {
            len: line.len(),
            limit: limits.max_line_bytes,
        });
    }
    let wire = match serde_json::from_slice::<Wire<'_>>(line) {
        Ok(w) => w,
        // The slow path says exactly what is wrong (or accepts what the fast path's
        // strictness refused, e.g. a duplicate key: the last one wins, as in JSON.parse).
        Err(_) => return parse_slow(line, limits, now),
    };
    let kind = match wire.ty.as_ref() {
        "failure" => Some(wire.kind.map(Cow::into_owned)),
        "exposure" => None,
        other => return Err(EventError::UnknownType(truncate(other))),
    };
    build(
        kind,
        Fields {
            time: &wire.time,
            app: &wire.app,
            app_type: &wire.app_type,
            resources: wire.resources.0,
            hours: wire.hours,
            launches: wire.launches,
        },
        limits,
        now,
    )
}

struct Fields<'s, 'a> {
    time: &'s str,
    app: &'s str,
    app_type: &'s str,
    resources: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    hours: Option<f64>,
    launches: Option<f64>,
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

fn parse_slow(line: &[u8], limits: &Limits, now: i64) -> Result<Event, EventError> {
    let value: Value =
        serde_json::from_slice(line).map_err(|e| EventError::MalformedJson(e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(EventError::MalformedJson(
            "the line is not an object".into(),
        ));
    };
    fn string<'v>(
        obj: &'v serde_json::Map<String, Value>,
        field: &'static str,
    ) -> Result<Option<&'v str>, EventError> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(EventError::WrongType {
                field,
                expected: "a string",
            }),
        }
    }
    fn number(
        obj: &serde_json::Map<String, Value>,
        field: &'static str,
    ) -> Result<Option<f64>, EventError> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(_) => Err(EventError::WrongType {
                field,
                expected: "a number",
            }),
        }
    }
    let ty = string(&obj, "type")?.ok_or(EventError::MissingField("type"))?;
    let time = string(&obj, "time")?.ok_or(EventError::MissingField("time"))?;
    let app = string(&obj, "app")?.ok_or(EventError::MissingField("app"))?;
    let app_type = string(&obj, "app_type")?.ok_or(EventError::MissingField("app_type"))?;
    let kind = string(&obj, "kind")?;
    let hours = number(&obj, "hours")?;
    let launches = number(&obj, "launches")?;
    let resources = match obj.get("resources") {
        None | Some(Value::Null) => return Err(EventError::MissingField("resources")),
        Some(Value::Object(m)) => {
            let mut v = Vec::with_capacity(m.len());
            for (k, val) in m {
                match val {
                    Value::String(s) => {
                        v.push((Cow::Borrowed(k.as_str()), Cow::Borrowed(s.as_str())))
                    }
                    _ => {
                        return Err(EventError::WrongType {
                            field: "resources",
                            expected: "a map of string values",
                        })
                    }
                }
            }
            v
        }
        Some(_) => {
            return Err(EventError::WrongType {
                field: "resources",
                expected: "an object",
            })
        }
    };
    let kind = match ty {
        "failure" => Some(kind.map(str::to_owned)),
        "exposure" => None,
        other => return Err(EventError::UnknownType(truncate(other))),
    };
    build(
        kind,
        Fields {
            time,
            app,
            app_type,
            resources,
            hours,
            launches,
        },
        limits,
        now,
    )
}

fn check_len(field: &str, value: &str, limits: &Limits) -> Result<(), EventError> {
    if value.len() > limits.max_value_bytes {
        return Err(EventError::ValueTooLong {
            field: truncate(field),
            len: value.len(),
            limit: limits.max_value_bytes,
        });
    }
    Ok(())
}

/// `kind`: `Some(kind)` for a failure, `None` for exposure.
fn build(
    kind: Option<Option<String>>,
    f: Fields<'_, '_>,
    limits: &Limits,
    now: i64,
) -> Result<Event, EventError> {
    for (field, value) in [("app", f.app), ("app_type", f.app_type)] {
        if value.is_empty() {
            return Err(EventError::MissingField(if field == "app" {
                "app"
            } else {
                "app_type"
            }));
        }
        check_len(field, value, limits)?;
    }
    if f.resources.len() > limits.max_attributes {
        return Err(EventError::TooManyAttributes {
            count: f.resources.len(),
            limit: limits.max_attributes,
        });
    }
    let mut resources: Vec<(String, String)> = Vec::with_capacity(f.resources.len());
    for (k, v) in f.resources {
        if k.is_empty() {
            return Err(EventError::MissingField("resources (attribute name)"));
        }
        check_len("resource name", &k, limits)?;
        check_len(&k, &v, limits)?;
        resources.push((k.into_owned(), v.into_owned()));
    }
    resources.sort_by(|a, b| a.0.cmp(&b.0));
    // A duplicate name: the last value wins (JSON.parse semantics). The sort is
    // stable, so the last of equal names is the input's last.
    let mut dedup: Vec<(String, String)> = Vec::with_capacity(resources.len());
    for (k, v) in resources {
        match dedup.last_mut() {
            Some(last) if last.0 == k => last.1 = v,
            _ => dedup.push((k, v)),
        }
    }
    let time = parse_time(f.time)?;
    let skew = time - now;
    if skew > limits.max_future_secs || -skew > limits.max_age_secs {
        return Err(EventError::ClockSkew { skew_secs: skew });
    }
    let kind = match kind {
        Some(k) => {
            if f.hours.is_some() || f.launches.is_some() {
                return Err(EventError::BadExposure(
                    "a failure event carries no exposure".into(),
                ));
            }
            let k = k.ok_or(EventError::MissingField("kind"))?;
            if k.is_empty() {
                return Err(EventError::MissingField("kind"));
            }
            check_len("kind", &k, limits)?;
            EventKind::Failure(k)
        }
        None => {
            let (amount, hours) = match (f.hours, f.launches) {
                (Some(h), None) => (h, true),
                (None, Some(l)) => (l, false),
                (None, None) => return Err(EventError::MissingField("hours or launches")),
                (Some(_), Some(_)) => {
                    return Err(EventError::BadExposure(
                        "both hours and launches given".into(),
                    ))
                }
            };
            if !amount.is_finite() || amount < 0.0 || amount > limits.max_exposure {
                return Err(EventError::BadExposure(format!(
                    "{amount} is not in [0, {}]",
                    limits.max_exposure
                )));
            }
            if !hours && amount.fract() != 0.0 {
                return Err(EventError::BadExposure(format!(
                    "launches must be a whole number, not {amount}"
                )));
            }
            let scaled = (amount * EXPOSURE_SCALE).round() as u64;
            EventKind::Exposure(if hours {
                Exposure::Hours(scaled)
            } else {
                Exposure::Launches(scaled)
            })
        }
    };
    Ok(Event {
        kind,
        time,
        app: f.app.to_owned(),
        app_type: f.app_type.to_owned(),
        resources: dedup,
    })
}

/// Parses an RFC 3339 time to seconds since the epoch (fractions dropped), with its
/// offset applied (`10:00:00+05:30` is `04:30:00Z`). A time without an offset, or with
/// a space for the `T`, is read as UTC.
pub fn parse_time(s: &str) -> Result<i64, EventError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp());
    }
    let t = humantime::parse_rfc3339_weak(s).map_err(|_| EventError::BadTime(truncate(s)))?;
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => Ok(d.as_secs() as i64),
        Err(e) => Ok(-(e.duration().as_secs() as i64)),
    }
}

/// Formats seconds since the epoch as RFC 3339 (`2026-12-01T10:00:00Z`).
pub fn format_time(secs: i64) -> String {
    let t = if secs >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64)
    } else {
        std::time::UNIX_EPOCH
    };
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Event {
    /// The event as one JSON line (no newline), in the input format.
    pub fn to_json_line(&self) -> String {
        let mut obj = serde_json::Map::new();
        let (ty, kind, exposure) = match &self.kind {
            EventKind::Failure(k) => ("failure", Some(k.clone()), None),
            EventKind::Exposure(e) => ("exposure", None, Some(*e)),
        };
        obj.insert("type".into(), ty.into());
        obj.insert("time".into(), format_time(self.time).into());
        obj.insert("app".into(), self.app.clone().into());
        obj.insert("app_type".into(), self.app_type.clone().into());
        if let Some(k) = kind {
            obj.insert("kind".into(), k.into());
        }
        let res: serde_json::Map<String, Value> = self
            .resources
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        obj.insert("resources".into(), Value::Object(res));
        match exposure {
            Some(Exposure::Hours(h)) => {
                obj.insert("hours".into(), (h as f64 / EXPOSURE_SCALE).into());
            }
            Some(Exposure::Launches(l)) => {
                obj.insert(
                    "launches".into(),
                    ((l as f64 / EXPOSURE_SCALE).round() as u64).into(),
                );
            }
            None => {}
        }
        Value::Object(obj).to_string()
    }
}

#[cfg(test)]
mod time_tests {
    use super::parse_time;

    #[test]
    fn offsets_are_applied_and_times_without_one_are_utc() {
        let utc = parse_time("2026-11-29T04:30:00Z").unwrap();
        assert_eq!(parse_time("2026-11-29T10:00:00+05:30").unwrap(), utc);
        assert_eq!(parse_time("2026-11-29T10:00:00.123+05:30").unwrap(), utc);
        assert_eq!(parse_time("2026-11-28T23:30:00-05:00").unwrap(), utc);
        assert_eq!(parse_time("2026-11-29T04:30:00").unwrap(), utc);
        assert_eq!(parse_time("2026-11-29 04:30:00").unwrap(), utc);
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2026-13-29T04:30:00Z").is_err());
    }
}
