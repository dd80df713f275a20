//! Counters read around a timed window: interface and UDP counters inside a namespace,
//! machine-wide CPU time, the data plane's worker threads' CPU time, and its per-stage
//! pipeline counters. Used for the delivered-packet count and for the analysis lines.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use pipewright_nic::dataplane::RunningDataPlane;
use pipewright_nic::host::Namespace;

/// `rx_packets` of interface `dev` in `ns` (from the namespace's `/proc/net/dev`).
pub fn dev_rx_packets(ns: &Namespace, dev: &str) -> Result<u64> {
    let text = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/dev"))??;
    text.lines()
        .filter_map(|l| l.trim_start().split_once(':'))
        .find(|(name, _)| *name == dev)
        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
        .ok_or_else(|| anyhow!("no interface {dev} in {}", ns.name()))
}

/// The namespace's UDP counters (`Udp:` of `/proc/net/snmp`) by name.
pub fn udp_snmp(ns: &Namespace) -> Result<BTreeMap<String, u64>> {
    let text = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))??;
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next(), udp.next());
    let (names, values) = names.zip(values).context("no Udp: lines in snmp")?;
    Ok(names
        .split_whitespace()
        .skip(1)
        .zip(values.split_whitespace().skip(1))
        .filter_map(|(n, v)| Some((n.to_string(), v.parse().ok()?)))
        .collect())
}

/// Machine-wide CPU time from `/proc/stat`, in clock ticks (summed over CPUs).
#[derive(Clone, Copy, Default)]
pub struct Cpu {
    pub busy: u64,
    pub softirq: u64,
    pub total: u64,
}

pub fn cpu() -> Cpu {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let total: u64 = (0..8).map(get).sum();
    Cpu {
        busy: total - get(3) - get(4),
        softirq: get(6),
        total,
    }
}

/// Per thread group of this process (the data plane's workers `pipewright-w<i>`, and
/// the generator threads `nic_e2e-gen*` summed as `gen`): nanoseconds on a CPU and
/// nanoseconds runnable but waiting for one (`/proc/.../schedstat`).
pub fn thread_times() -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in dir.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        let key = if comm.starts_with("pipewright-w") {
            comm.to_string()
        } else if comm.starts_with("nic_e2e-gen") {
            "gen".to_string()
        } else {
            continue;
        };
        let sched = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        let mut f = sched
            .split_whitespace()
            .filter_map(|v| v.parse::<u64>().ok());
        let (run, wait) = (f.next().unwrap_or(0), f.next().unwrap_or(0));
        let e: &mut (u64, u64) = out.entry(key).or_default();
        e.0 += run;
        e.1 += wait;
    }
    out
}

fn ticks_per_sec() -> f64 {
    let t = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK);
    if let Ok(Some(t)) = t.map(|t| t.filter(|&t| t > 0)) {
        t as f64
    } else {
        100.0
    }
}

/// One stage's counters at a point in time.
#[derive(Clone)]
pub struct Stage {
    name: String,
    worker: usize,
    items_in: u64,
    bursts: u64,
    timed_items: u64,
    timed_nanos: u64,
    dropped: u64,
}

/// Everything sampled at one instant, for a before/after difference.
pub struct Sample {
    at: Instant,
    cpu: Cpu,
    threads: BTreeMap<String, (u64, u64)>,
    stages: Vec<Stage>,
    ports: Vec<(u16, u64, u64, u64)>,
}

impl Sample {
    /// Takes a sample; `plane` adds the data plane's stage and port counters.
    pub fn take(plane: Option<&RunningDataPlane>) -> Self {
        let stages = plane.map_or_else(Vec::new, |p| {
            p.snapshot()
                .stages
                .iter()
                .map(|s| Stage {
                    name: s.name.clone(),
                    worker: s.worker,
                    items_in: s.items_in,
                    bursts: s.bursts,
                    timed_items: s.timed_items,
                    timed_nanos: s.timed_nanos,
                    dropped: s.dropped_total(),
                })
                .collect()
        });
        let ports = plane.map_or_else(Vec::new, |p| {
            p.port_counters()
                .iter()
                .map(|(vf, c)| (*vf, c.rx_frames, c.tx_frames, c.dropped))
                .collect()
        });
        Self {
            at: Instant::now(),
            cpu: cpu(),
            threads: thread_times(),
            stages,
            ports,
        }
    }

    /// Machine CPU busy (in CPUs, e.g. 1.7 of 2) between `self` and a later sample,
    /// and the nanoseconds of CPU spent per `items`.
    pub fn cpu_line(&self, later: &Sample, items: u64) -> String {
        let secs = later.at.duration_since(self.at).as_secs_f64();
        let tps = ticks_per_sec();
        let busy = (later.cpu.busy - self.cpu.busy) as f64 / tps;
        let soft = (later.cpu.softirq - self.cpu.softirq) as f64 / tps;
        let total = (later.cpu.total - self.cpu.total) as f64 / tps;
        let mut line = format!(
            "cpu busy {:.2} of {:.2} CPUs (softirq {:.2}), {:.0} ns CPU/packet",
            busy / secs,
            total / secs,
            soft / secs,
            busy * 1e9 / items.max(1) as f64
        );
        for (name, (run, wait)) in &later.threads {
            let (run0, wait0) = self.threads.get(name).copied().unwrap_or_default();
            line += &format!(
                "; {name} on-cpu {:.2} runq-wait {:.2}",
                (run - run0) as f64 / 1e9 / secs,
                (wait - wait0) as f64 / 1e9 / secs
            );
        }
        line
    }

    /// Per stage: items/s, mean ns per item over the window, mean burst, drops; and
    /// the ports' frame counts. One line per stage.
    pub fn stage_table(&self, later: &Sample) -> String {
        let secs = later.at.duration_since(self.at).as_secs_f64();
        let mut out = String::new();
        for (a, b) in self.stages.iter().zip(&later.stages) {
            let items = b.items_in - a.items_in;
            if items == 0 {
                continue;
            }
            let timed = b.timed_items - a.timed_items;
            let ns = (timed > 0).then(|| (b.timed_nanos - a.timed_nanos) as f64 / timed as f64);
            let bursts = (b.bursts - a.bursts).max(1);
            out += &format!(
                "    {:<18} w{} {:>10.0} items/s  {:>7} ns/item  burst {:>5.1}  dropped {}\n",
                b.name,
                b.worker,
                items as f64 / secs,
                ns.map_or("-".into(), |n| format!("{n:.0}")),
                items as f64 / bursts as f64,
                b.dropped - a.dropped,
            );
        }
        for (a, b) in self.ports.iter().zip(&later.ports) {
            out += &format!(
                "    port vf{}: rx {:.0}/s tx {:.0}/s dropped {}\n",
                b.0,
                (b.1 - a.1) as f64 / secs,
                (b.2 - a.2) as f64 / secs,
                b.3 - a.3
            );
        }
        out
    }
}

/// Resident memory of this process (the data plane's workers, UMEM and rings live
/// here, as do the generator threads), in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}
