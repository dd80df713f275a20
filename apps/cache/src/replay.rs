//! Trace replay with libCacheSim's conventions: CSV traces described by
//! `obj-id-col=N,obj-size-col=N,time-col=N,has-header=true,delimiter=,` options
//! (columns counted from 1) and the `oracleGeneral` binary format (24-byte records:
//! `u32` time, `u64` object id, `u32` size, `i64` next access, little endian).
//!
//! [`simulate`] is the policy-only mode (an object-count cache, no I/O, like
//! libCacheSim's simulator with `ignore_obj_size`); [`replay_real`] sends the same
//! requests through a real [`Cache`](crate::Cache) over a file backend.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::backend::FileBackend;
use crate::cache::Cache;
use crate::config::CacheConfig;
use crate::error::CacheError;
use crate::policy::{simulate_request, PolicyKind};

/// A trace that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Reading the file failed.
    #[error("cannot read the trace: {0}")]
    Io(#[from] std::io::Error),
    /// A CSV option is not understood.
    #[error("bad trace option {0:?}: use obj-id-col=N,obj-size-col=N,time-col=N,has-header=true|false,delimiter=C,obj-id-is-num=true|false")]
    BadOption(String),
    /// A CSV line lacks a column or has a malformed number.
    #[error("line {line}: {what}; check the -t column options")]
    BadLine {
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        what: String,
    },
    /// An oracleGeneral file whose length is not a multiple of 24 bytes.
    #[error("oracleGeneral trace of {0} bytes is not a whole number of 24-byte records")]
    TruncatedBinary(u64),
    /// A size like `10%` or `5000` that does not parse.
    #[error("bad cache size {0:?}: give a number of objects or a percentage of the distinct objects (10%)")]
    BadSize(String),
}

/// How a trace file is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceFormat {
    /// libCacheSim's `oracleGeneral` binary.
    OracleGeneral,
    /// Delimited text.
    Csv(CsvOptions),
}

/// libCacheSim's CSV reader options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvOptions {
    /// Column (from 1) of the object id.
    pub obj_id_col: usize,
    /// Column of the object size (0: none).
    pub obj_size_col: usize,
    /// Column of the timestamp (0: none).
    pub time_col: usize,
    /// Whether the first line is a header.
    pub has_header: bool,
    /// Field delimiter.
    pub delimiter: u8,
    /// Whether object ids are numbers (else they are hashed).
    pub obj_id_is_num: bool,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self {
            obj_id_col: 1,
            obj_size_col: 0,
            time_col: 0,
            has_header: false,
            delimiter: b',',
            obj_id_is_num: true,
        }
    }
}

impl CsvOptions {
    /// Parses `obj-id-col=2,obj-size-col=3,has-header=true,delimiter=,` (a trailing
    /// `delimiter=,` is the comma itself).
    pub fn parse(s: &str) -> Result<Self, TraceError> {
        let mut o = CsvOptions::default();
        let mut rest = s.trim();
        while !rest.is_empty() {
            let (item, tail) = if let Some(t) = rest.strip_prefix("delimiter=") {
                // The delimiter may itself be a comma.
                let mut chars = t.chars();
                let d = chars
                    .next()
                    .ok_or_else(|| TraceError::BadOption(rest.into()))?;
                let d = match d {
                    '\\' if t.starts_with("\\t") => {
                        chars.next();
                        '\t'
                    }
                    c => c,
                };
                o.delimiter = u8::try_from(d).map_err(|_| TraceError::BadOption(rest.into()))?;
                let tail = chars.as_str();
                ("", tail.strip_prefix(',').unwrap_or(tail))
            } else {
                match rest.split_once(',') {
                    Some((a, b)) => (a, b),
                    None => (rest, ""),
                }
            };
            rest = tail.trim_start();
            if item.is_empty() {
                continue;
            }
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| TraceError::BadOption(item.into()))?;
            let num = || {
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| TraceError::BadOption(item.into()))
            };
            let flag = || match v.trim() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(TraceError::BadOption(item.into())),
            };
            match k.trim() {
                "obj-id-col" => o.obj_id_col = num()?,
                "obj-size-col" => o.obj_size_col = num()?,
                "time-col" => o.time_col = num()?,
                "has-header" => o.has_header = flag()?,
                "obj-id-is-num" => o.obj_id_is_num = flag()?,
                _ => return Err(TraceError::BadOption(item.into())),
            }
        }
        if o.obj_id_col == 0 {
            return Err(TraceError::BadOption(
                "obj-id-col=0 (columns count from 1)".into(),
            ));
        }
        Ok(o)
    }
}

/// Guesses the format from the file name (`.oracleGeneral` / `.bin` → binary).
pub fn format_for(path: &Path, csv_options: Option<&str>) -> Result<TraceFormat, TraceError> {
    if let Some(o) = csv_options {
        return Ok(TraceFormat::Csv(CsvOptions::parse(o)?));
    }
    let name = path.to_string_lossy();
    if name.contains("oracleGeneral") || name.ends_with(".bin") {
        Ok(TraceFormat::OracleGeneral)
    } else {
        Ok(TraceFormat::Csv(CsvOptions::default()))
    }
}

fn hash_id(s: &[u8]) -> u64 {
    // FNV-1a: stable across runs and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in s {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Reads the object ids of a trace, in order.
pub fn read_trace(path: &Path, format: &TraceFormat) -> Result<Vec<u64>, TraceError> {
    match format {
        TraceFormat::OracleGeneral => {
            let mut bytes = Vec::new();
            File::open(path)?.read_to_end(&mut bytes)?;
            if bytes.len() % 24 != 0 {
                return Err(TraceError::TruncatedBinary(bytes.len() as u64));
            }
            Ok(bytes
                .chunks_exact(24)
                .map(|r| u64::from_le_bytes(r[4..12].try_into().expect("8 bytes")))
                .collect())
        }
        TraceFormat::Csv(o) => {
            let mut ids = Vec::new();
            let reader = BufReader::new(File::open(path)?);
            for (i, line) in reader.split(b'\n').enumerate() {
                let line = line?;
                let line = line.strip_suffix(b"\r").unwrap_or(&line);
                if (i == 0 && o.has_header) || line.is_empty() {
                    continue;
                }
                let field = line
                    .split(|&b| b == o.delimiter)
                    .nth(o.obj_id_col - 1)
                    .ok_or_else(|| TraceError::BadLine {
                        line: i as u64 + 1,
                        what: format!("no column {}", o.obj_id_col),
                    })?;
                let field = field.trim_ascii();
                let id = if o.obj_id_is_num {
                    std::str::from_utf8(field)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or_else(|| TraceError::BadLine {
                            line: i as u64 + 1,
                            what: format!(
                                "object id {:?} is not a number (set obj-id-is-num=false to hash it)",
                                String::from_utf8_lossy(field)
                            ),
                        })?
                } else {
                    hash_id(field)
                };
                ids.push(id);
            }
            Ok(ids)
        }
    }
}

/// Writes object ids as an `oracleGeneral` trace (unit sizes, no next-access data).
pub fn write_oracle_general(path: &Path, ids: &[u64]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(ids.len() * 24);
    for (i, id) in ids.iter().enumerate() {
        out.extend_from_slice(&(i as u32).to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&(-1i64).to_le_bytes());
    }
    std::fs::write(path, out)
}

/// A Zipf(`alpha`) trace of `requests` over `objects` ids (0 = most popular),
/// deterministic in `seed`.
pub fn zipf_trace(objects: u64, requests: usize, alpha: f64, seed: u64) -> Vec<u64> {
    let mut cdf = Vec::with_capacity(objects as usize);
    let mut sum = 0.0;
    for k in 1..=objects {
        sum += 1.0 / (k as f64).powf(alpha);
        cdf.push(sum);
    }
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    // Scatter ranks over ids so popularity is not ordered by id.
    let scatter = |r: u64| r.wrapping_mul(0x9e37_79b9_7f4a_7c15) % (objects * 16);
    (0..requests)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64 * sum;
            let rank = cdf.partition_point(|&c| c < u) as u64;
            scatter(rank.min(objects - 1))
        })
        .collect()
}

/// Distinct objects of a trace.
pub fn distinct(ids: &[u64]) -> usize {
    let mut seen = rustc_hash::FxHashSet::default();
    seen.extend(ids.iter().copied());
    seen.len()
}

/// Parses `5000` (objects) or `10%` (of `distinct`).
pub fn parse_size(s: &str, distinct: usize) -> Result<usize, TraceError> {
    let s = s.trim();
    let n = if let Some(p) = s.strip_suffix('%') {
        let p: f64 = p
            .trim()
            .parse()
            .map_err(|_| TraceError::BadSize(s.into()))?;
        if !(0.0..=100.0).contains(&p) {
            return Err(TraceError::BadSize(s.into()));
        }
        (distinct as f64 * p / 100.0) as usize
    } else {
        s.parse().map_err(|_| TraceError::BadSize(s.into()))?
    };
    if n == 0 {
        return Err(TraceError::BadSize(s.into()));
    }
    Ok(n)
}

/// The outcome of one replay.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayResult {
    /// The policy.
    pub policy: PolicyKind,
    /// Cache size in objects.
    pub size: usize,
    /// Requests replayed.
    pub requests: u64,
    /// Misses.
    pub misses: u64,
    /// Wall time of the replay loop.
    pub elapsed: Duration,
}

impl ReplayResult {
    /// Misses / requests.
    pub fn miss_ratio(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.misses as f64 / self.requests as f64
        }
    }
    /// Requests per second.
    pub fn reqs_per_sec(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Policy-only replay: an object-count cache of `size` objects.
pub fn simulate(ids: &[u64], policy: PolicyKind, size: usize) -> ReplayResult {
    let mut p = policy.build(size);
    let start = Instant::now();
    let mut misses = 0u64;
    for &id in ids {
        if !simulate_request(&mut *p, size, id) {
            misses += 1;
        }
    }
    ReplayResult {
        policy,
        size,
        requests: ids.len() as u64,
        misses,
        elapsed: start.elapsed(),
    }
}

/// Replay through the real chunk store: every distinct object is one 4 KiB chunk of a
/// volume in a file backend under `dir`, the cache holds `size` chunks (plus the free
/// watermark), and each request reads its object's chunk. Misses are the cache's own
/// (backend fetches).
pub async fn replay_real(
    ids: &[u64],
    policy: PolicyKind,
    size: usize,
    dir: &Path,
) -> Result<ReplayResult, CacheError> {
    let mut slot_of: FxHashMap<u64, u64> = FxHashMap::default();
    for &id in ids {
        let n = slot_of.len() as u64;
        slot_of.entry(id).or_insert(n);
    }
    let chunk = 4096u64;
    let vdir = dir.join("volumes");
    std::fs::create_dir_all(&vdir)?;
    let vol = vdir.join("objects");
    let f = File::create(&vol)?;
    f.set_len(slot_of.len() as u64 * chunk)?;
    drop(f);
    // Eviction in batches of 1% of the cache (one durable metadata commit each), the
    // free pool between 1% and 2%: about `size` chunks stay resident.
    let low = (size / 100).max(1) as u32;
    let mut cfg = CacheConfig::new(dir.join("cache"), size as u32 + 2 * low + 1);
    cfg.chunk_size = chunk;
    cfg.policy = policy;
    cfg.low_watermark = low;
    cfg.high_watermark = 2 * low;
    cfg.eviction_batch = low;
    let cache = Cache::open(cfg, Arc::new(FileBackend::new(&vdir)?)).await?;
    let v = cache.volume("objects")?;
    let start = Instant::now();
    for id in ids {
        cache.read(v, slot_of[id] * chunk, 512).await?;
    }
    let elapsed = start.elapsed();
    let s = cache.stats();
    Ok(ReplayResult {
        policy,
        size,
        requests: ids.len() as u64,
        misses: s.fills,
        elapsed,
    })
}

/// A miss-ratio curve as an SVG line chart (one line per policy).
pub fn curve_svg(points: &[(PolicyKind, Vec<(usize, f64)>)], title: &str) -> String {
    let (w, h, m) = (720.0, 440.0, 60.0);
    let max_x = points
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .max()
        .unwrap_or(1) as f64;
    let max_y = points
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(0.0f64, f64::max)
        .max(0.01);
    let sx = |x: f64| m + x / max_x * (w - 2.0 * m);
    let sy = |y: f64| h - m - y / max_y * (h - 2.0 * m);
    let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"];
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        w / 2.0,
        xml_escape(title)
    );
    s += &format!(
        "<line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - m, w - m, h - m, h - m
    );
    for i in 0..=5 {
        let y = max_y * i as f64 / 5.0;
        s += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.3}</text>\n",
            m - 6.0,
            sy(y) + 4.0,
            y
        );
        let x = max_x * i as f64 / 5.0;
        s += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{:.0}</text>\n",
            sx(x),
            h - m + 18.0,
            x
        );
    }
    s += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">cache size (objects)</text><text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">miss ratio</text>\n",
        w / 2.0,
        h - 16.0,
        h / 2.0,
        h / 2.0
    );
    for (i, (policy, pts)) in points.iter().enumerate() {
        let c = colors[i % colors.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x as f64), sy(*y)))
            .collect();
        s += &format!(
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>\n",
            path.join(" ")
        );
        for (x, y) in pts {
            s += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"/>\n",
                sx(*x as f64),
                sy(*y)
            );
        }
        s += &format!(
            "<text x=\"{}\" y=\"{}\" fill=\"{c}\">{}</text>\n",
            w - m - 80.0,
            m + 16.0 * i as f64,
            policy
        );
    }
    s += "</svg>\n";
    s
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn csv_options_parse_like_libcachesim() {
        let o =
            CsvOptions::parse("obj-id-col=2,obj-size-col=3,time-col=1,has-header=true,delimiter=,")
                .unwrap();
        assert_eq!(
            (
                o.obj_id_col,
                o.obj_size_col,
                o.time_col,
                o.has_header,
                o.delimiter
            ),
            (2, 3, 1, true, b',')
        );
        let o = CsvOptions::parse("delimiter=\\t,obj-id-col=1").unwrap();
        assert_eq!(o.delimiter, b'\t');
        assert!(CsvOptions::parse("obj-id-col=x").is_err());
        assert!(CsvOptions::parse("colour=blue").is_err());
        assert!(CsvOptions::parse("obj-id-col=0").is_err());
    }

    #[test]
    fn csv_and_binary_traces_read_the_same_ids() {
        let dir = tempfile::tempdir().unwrap();
        let ids = zipf_trace(100, 1000, 0.9, 3);
        write_oracle_general(&dir.path().join("t.oracleGeneral"), &ids).unwrap();
        let mut csv = String::from("time;size;id\n");
        for (i, id) in ids.iter().enumerate() {
            csv += &format!("{i};1;{id}\n");
        }
        std::fs::write(dir.path().join("t.csv"), csv).unwrap();
        let bin = read_trace(
            &dir.path().join("t.oracleGeneral"),
            &TraceFormat::OracleGeneral,
        )
        .unwrap();
        let fmt = format_for(
            Path::new("t.csv"),
            Some("obj-id-col=3,has-header=true,delimiter=;"),
        )
        .unwrap();
        let text = read_trace(&dir.path().join("t.csv"), &fmt).unwrap();
        assert_eq!(bin, ids);
        assert_eq!(text, ids);
        std::fs::write(dir.path().join("bad.csv"), "1\nx\n").unwrap();
        assert!(matches!(
            read_trace(
                &dir.path().join("bad.csv"),
                &TraceFormat::Csv(CsvOptions::default())
            ),
            Err(TraceError::BadLine { line: 2, .. })
        ));
        std::fs::write(dir.path().join("bad.bin"), [0u8; 25]).unwrap();
        assert!(matches!(
            read_trace(&dir.path().join("bad.bin"), &TraceFormat::OracleGeneral),
            Err(TraceError::TruncatedBinary(25))
        ));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("10%", 5000).unwrap(), 500);
        assert_eq!(parse_size("42", 5000).unwrap(), 42);
        assert!(parse_size("0", 10).is_err());
        assert!(parse_size("150%", 10).is_err());
    }

    #[test]
    fn zipf_is_skewed() {
        let ids = zipf_trace(1000, 20000, 0.99, 1);
        let small = simulate(&ids, PolicyKind::Lru, 100).miss_ratio();
        let big = simulate(&ids, PolicyKind::Lru, 500).miss_ratio();
        assert!(big < small && small < 0.7, "{small} {big}");
    }

    proptest! {
        #[test]
        fn csv_options_never_panic(s in ".{0,40}") {
            let _ = CsvOptions::parse(&s);
        }
    }
}
