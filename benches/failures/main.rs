//! Suite `failures`: failure-pattern analytics against named peers.
//!
//! - `detect-f1`: F1 of the planted patterns found (exact combination), micro-averaged
//!   over several seeds and sizes; peers `socorro-style` and `naive-threshold`.
//! - `ingest-events-per-s`: events parsed, validated, aggregated (every attribute,
//!   pair and full combination) and made durable (io_uring group-commit log) per
//!   second from a file; peer `duckdb` (PyPI) computing the same per-cell counts
//!   with GROUP BY from the same file.
//! - `time-to-detect`: events after a pattern starts until it is reported; peer
//!   `socorro-style` run on the same stream.
//!
//! `PIPEWRIGHT_BENCH_QUICK=1`: smaller fleets and file (< 60 s).

#[allow(dead_code)] // the suite does not use every shared helper
#[path = "../common/mod.rs"]
mod common;
mod peers;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io::{BufReader, BufWriter, Write};
use std::process::Command;
use std::rc::Rc;
use std::time::Instant;

use pipewright::failures::{
    detect, generate, generate_with, ingest_reader, ingest_reader_durable, parse_line, Aggregates,
    DetectConfig, FleetConfig, Limits, Planted, Report,
};

use peers::{Combo, Key, PeerCounts};

const NOW: i64 = 1_796_000_000;

fn key(app: &str, c: &std::collections::BTreeMap<String, String>) -> Key {
    let combo: Combo = c.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    (app.to_string(), combo)
}

fn truth(planted: &[Planted]) -> BTreeSet<Key> {
    planted
        .iter()
        .map(|p| key(&p.app_type, &p.combination))
        .collect()
}

fn ours(report: &Report) -> BTreeSet<Key> {
    report
        .findings
        .iter()
        .map(|f| key(&f.app_type, &f.combination))
        .collect()
}

#[derive(Default, Clone, Copy)]
struct Score {
    tp: u64,
    fp: u64,
    fn_: u64,
}

impl Score {
    fn add(&mut self, found: &BTreeSet<Key>, truth: &BTreeSet<Key>) {
        self.tp += found.intersection(truth).count() as u64;
        self.fp += found.difference(truth).count() as u64;
        self.fn_ += truth.difference(found).count() as u64;
    }
    fn precision(&self) -> f64 {
        if self.tp + self.fp == 0 {
            1.0
        } else {
            self.tp as f64 / (self.tp + self.fp) as f64
        }
    }
    fn recall(&self) -> f64 {
        if self.tp + self.fn_ == 0 {
            1.0
        } else {
            self.tp as f64 / (self.tp + self.fn_) as f64
        }
    }
    fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
}

fn result(case: &str, ours: f64, peer: &str, theirs: f64, unit: &str, better: &str) {
    let ratio = if theirs == 0.0 {
        f64::INFINITY
    } else {
        ours / theirs
    };
    println!(
        "RESULT suite=failures case={case} ours={ours:.4} peer={peer}:{theirs:.4} unit={unit} better={better} ratio={ratio:.3}"
    );
}

fn detect_f1(quick: bool) {
    let runs: Vec<(u64, u64)> = if quick {
        vec![(1, 60_000), (2, 60_000), (3, 150_000)]
    } else {
        vec![
            (1, 60_000),
            (2, 60_000),
            (3, 200_000),
            (4, 200_000),
            (5, 1_000_000),
            (6, 1_000_000),
        ]
    };
    let (mut s_ours, mut s_soc, mut s_naive) =
        (Score::default(), Score::default(), Score::default());
    for (seed, events) in runs {
        let fleet = FleetConfig::new(seed, events, NOW);
        let mut bytes = Vec::new();
        let summary = generate(&fleet, &mut bytes).expect("generate");
        let t = truth(&summary.planted);
        let aggs = ingest_reader(&bytes[..], Aggregates::default(), NOW).expect("ingest");
        let report = detect(&aggs, &DetectConfig::default());
        let found = ours(&report);
        let mut counts = PeerCounts::default();
        counts.add_lines(&bytes, NOW);
        let soc = peers::socorro(&counts);
        let nai = peers::naive(&counts);
        let mut one = Score::default();
        one.add(&found, &t);
        eprintln!(
            "detect-f1 seed={seed} events={}: ours {} found ({} true, {} false); socorro-style {} found ({} true); naive {} found ({} true)",
            summary.events,
            found.len(),
            one.tp,
            one.fp,
            soc.len(),
            soc.intersection(&t).count(),
            nai.len(),
            nai.intersection(&t).count()
        );
        for k in found.difference(&t) {
            eprintln!("  ours false: {k:?}");
        }
        for k in t.difference(&found) {
            eprintln!("  ours missed: {k:?}");
        }
        s_ours.add(&found, &t);
        s_soc.add(&soc, &t);
        s_naive.add(&nai, &t);
    }
    eprintln!(
        "detect-f1 totals: ours P={:.3} R={:.3} (false discoveries {} of {}); socorro-style P={:.3} R={:.3}; naive P={:.3} R={:.3}",
        s_ours.precision(),
        s_ours.recall(),
        s_ours.fp,
        s_ours.tp + s_ours.fp,
        s_soc.precision(),
        s_soc.recall(),
        s_naive.precision(),
        s_naive.recall()
    );
    result(
        "detect-f1",
        s_ours.f1(),
        "socorro-style",
        s_soc.f1(),
        "f1",
        "higher",
    );
    result(
        "detect-f1",
        s_ours.f1(),
        "naive-threshold",
        s_naive.f1(),
        "f1",
        "higher",
    );
}

const DUCKDB: &str = r#"
import sys, time
import duckdb
path = sys.argv[1]
t = time.perf_counter()
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
con.execute("SET preserve_insertion_order = false")
con.execute(f"""CREATE TEMP TABLE ev AS SELECT row_number() OVER () AS id, type, app_type, resources, hours
  FROM read_json('{path}', format='newline_delimited', columns={{'type':'VARCHAR','time':'VARCHAR','app':'VARCHAR',
  'app_type':'VARCHAR','kind':'VARCHAR','resources':'MAP(VARCHAR, VARCHAR)','hours':'DOUBLE','launches':'DOUBLE'}})""")
con.execute("""CREATE TEMP TABLE kv AS SELECT id, type, app_type, hours,
  unnest(map_keys(resources)) AS k, unnest(map_values(resources)) AS v FROM ev""")
singles = con.execute("""SELECT app_type, k, v, count(*) FILTER (WHERE type = 'failure'), sum(hours)
  FROM kv GROUP BY ALL""").fetchall()
pairs = con.execute("""SELECT a.app_type, a.k, a.v, b.k, b.v, count(*) FILTER (WHERE a.type = 'failure'), sum(a.hours)
  FROM kv a JOIN kv b ON a.id = b.id AND a.k < b.k GROUP BY ALL""").fetchall()
full = con.execute("""SELECT app_type, CAST(map_entries(resources) AS VARCHAR), count(*) FILTER (WHERE type = 'failure'), sum(hours)
  FROM ev GROUP BY ALL""").fetchall()
el = time.perf_counter() - t
print(el, len(singles), len(pairs), len(full), sum(r[3] for r in singles))
"#;

fn duckdb_available() -> bool {
    Command::new("python3")
        .args(["-c", "import duckdb"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn ingest(quick: bool) {
    if !duckdb_available() {
        eprintln!("skipped: ingest-events-per-s needs python3 with duckdb (pip install duckdb)");
        return;
    }
    let events = if quick { 300_000 } else { 10_000_000 };
    let dir = std::env::temp_dir().join(format!("pw-failures-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("fleet.jsonl");
    let summary = {
        let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).expect("file"));
        let s = generate(&FleetConfig::new(11, events, NOW), &mut w).expect("generate");
        w.flush().expect("flush");
        s
    };
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "ingest: {} events, {} MB file; ours: parse, validate, aggregate (singles, pairs, full), log with fdatasync",
        summary.events,
        size >> 20
    );
    let rounds = if quick { 2 } else { 3 };
    let (mut ours_rates, mut peer_rates) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let t = Instant::now();
        let f = std::fs::File::open(&path).expect("open");
        let aggs = ingest_reader_durable(
            BufReader::with_capacity(1 << 20, f),
            Aggregates::default(),
            NOW,
            &dir.join("events.log"),
        )
        .expect("ingest");
        let el = t.elapsed().as_secs_f64();
        assert_eq!(
            aggs.accepted(),
            summary.events,
            "every generated event accepted"
        );
        let c = aggs.canonical();
        let (singles, pairs, full): (usize, usize, usize) =
            c.apps.values().fold((0, 0, 0), |a, app| {
                (
                    a.0 + app.singles.len(),
                    a.1 + app.pairs.len(),
                    a.2 + app.full.len(),
                )
            });
        ours_rates.push(summary.events as f64 / el);
        eprintln!(
            "  round {round}: ours {:.0} events/s ({el:.2} s; cells {singles} singles, {pairs} pairs, {full} full)",
            summary.events as f64 / el
        );
        let out = Command::new("python3")
            .args(["-c", DUCKDB])
            .arg(&path)
            .output()
            .expect("python3");
        if !out.status.success() {
            eprintln!("duckdb failed: {}", String::from_utf8_lossy(&out.stderr));
            return;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let f: Vec<&str> = text
            .lines()
            .last()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let el: f64 = f[0].parse().expect("seconds");
        let (ds, dp, df, dfail): (usize, usize, usize, u64) = (
            f[1].parse().expect("n"),
            f[2].parse().expect("n"),
            f[3].parse().expect("n"),
            f[4].parse().expect("n"),
        );
        assert_eq!(
            (ds, dp, df),
            (singles, pairs, full),
            "duckdb computed the same cells"
        );
        assert_eq!(
            dfail,
            summary.failures * 5,
            "duckdb counted the same failures (5 attributes each)"
        );
        peer_rates.push(summary.events as f64 / el);
        eprintln!(
            "  round {round}: duckdb {:.0} events/s ({el:.2} s)",
            summary.events as f64 / el
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    result(
        "ingest-events-per-s",
        common::median(ours_rates),
        "duckdb",
        common::median(peer_rates),
        "events/s",
        "higher",
    );
}

struct Shared(Rc<RefCell<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn time_to_detect(quick: bool) {
    let seeds: Vec<u64> = if quick {
        vec![21, 22]
    } else {
        vec![21, 22, 23, 24, 25]
    };
    let (mut ours_v, mut peer_v) = (Vec::new(), Vec::new());
    for seed in seeds {
        let mut fleet = FleetConfig::new(seed, if quick { 150_000 } else { 400_000 }, NOW);
        fleet.patterns.retain(|p| p.start_frac > 0.0);
        let target = key(&fleet.patterns[0].app_type, &fleet.patterns[0].combination);
        let start_frac = fleet.patterns[0].start_frac;
        let buf = Rc::new(RefCell::new(Vec::new()));
        let mut aggs = Aggregates::default();
        let mut counts = PeerCounts::default();
        let mut ticks_total = None;
        let (mut start_events, mut ours_at, mut peer_at) = (None, None, None);
        let per_tick = fleet.configs_per_app as f64 * 3.0 * 1.3;
        let ticks = (fleet.events as f64 / per_tick).ceil() as u64;
        let start_tick = (start_frac * ticks as f64).ceil() as u64;
        let summary = generate_with(&fleet, &mut Shared(buf.clone()), |tick, _, events| {
            let bytes = std::mem::take(&mut *buf.borrow_mut());
            for line in bytes.split(|b| *b == b'\n') {
                if let Ok(e) = parse_line(line, &Limits::default(), NOW) {
                    let _ = aggs.add(&e);
                    counts.add(&e);
                }
            }
            if tick + 1 == start_tick {
                start_events = Some(events);
            }
            if let Some(s) = start_events {
                if tick >= start_tick {
                    if ours_at.is_none()
                        && ours(&detect(&aggs, &DetectConfig::default())).contains(&target)
                    {
                        ours_at = Some(events - s);
                    }
                    if peer_at.is_none() && peers::socorro(&counts).contains(&target) {
                        peer_at = Some(events - s);
                    }
                }
            }
            ticks_total = Some(tick + 1);
            Ok(())
        })
        .expect("generate");
        let after = summary.events - start_events.unwrap_or(0);
        eprintln!(
            "time-to-detect seed={seed}: pattern starts after {} of {} events; ours after {:?}, socorro-style after {:?} (of {after} events after the start)",
            start_events.unwrap_or(0),
            summary.events,
            ours_at,
            peer_at
        );
        // Never detected: counted as every event after the start (censored).
        ours_v.push(ours_at.unwrap_or(after) as f64);
        peer_v.push(peer_at.unwrap_or(after) as f64);
    }
    result(
        "time-to-detect",
        common::median(ours_v),
        "socorro-style",
        common::median(peer_v),
        "events",
        "lower",
    );
}

fn main() {
    let quick = common::quick();
    let filter = common::case_filter();
    eprintln!("failures suite (quick={quick}, load {})", common::loadavg());
    if common::wants(filter.as_deref(), "detect-f1") {
        detect_f1(quick);
    }
    if common::wants(filter.as_deref(), "ingest-events-per-s") {
        ingest(quick);
    }
    if common::wants(filter.as_deref(), "time-to-detect") {
        time_to_detect(quick);
    }
}
