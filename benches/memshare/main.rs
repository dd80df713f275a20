//! Suite `memshare`: load-time sharing of VM image memory (pipewright's content store)
//! against Linux KSM scanning the same VMs' memory after the fact.
//!
//! 8 VMs (real KVM guests, one process each) run layered images (an ext4 base from real
//! package files and 3 derived images, 2 VMs each). Every guest checksums its image (the
//! host checks every checksum), so all image pages are touched.
//!
//! - `saved-fraction`: (pages loaded - distinct physical frames behind them, read from
//!   /proc/PID/pagemap) / (pages loaded - distinct contents, from the manifests). Peer: KSM
//!   (`pages_sharing` / the same achievable) when its run ends.
//! - `time-to-share`: seconds from the first VM start until sharing is complete: ours when
//!   every VM runs on shared pages and has checksummed; KSM (the VMs' images copied into
//!   anonymous `MADV_MERGEABLE` memory, as QEMU does) when `pages_sharing` reaches 99 % of
//!   the achievable. Peers `ksm` (default ksmd settings: 100 pages per 20 ms) and
//!   `ksm-aggressive` (1000 pages per 20 ms). A KSM run that hits its cap is reported as
//!   the cap (a lower bound; stderr says so).
//! - `cpu-to-share`: CPU seconds spent to get there: ours = the host process (reading,
//!   hashing, comparing, storing, starting VMs); KSM = ksmd's CPU time.
//! - `load-overhead`: mean time from VM start to a running guest, loading through the
//!   content store vs a plain copy of the image into guest memory (alternating).
//! - `loader-throughput`: MB/s of image loading into a fresh group store (the 4 images
//!   one after another: read, hash, compare, store): the loader on pipewright stages
//!   (`ContentStore::load`, replicated hash stage) vs the inline loop it replaced
//!   (`ContentStore::load_inline`, peer `inline-loop`), alternating round by round;
//!   the median of the rounds.
//!
//! Needs /dev/kvm, root (pagemap, /sys/kernel/mm/ksm) and mkfs.ext4; without them it says
//! what is missing and prints no RESULT line. The KSM settings found are restored at the
//! end (also on panic).

#[path = "../common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pipewright::memshare::{
    frames, generate, page_checksum, read_manifest, ContentId, ContentStore, GroupConfig, Host,
    HostConfig, Image, ImageSet, LoaderConfig, Loading, VmId, VmRequest, PAGE,
};

const VMS: usize = 8;
const KSM: &str = "/sys/kernel/mm/ksm";

fn ksm_read(name: &str) -> u64 {
    std::fs::read_to_string(format!("{KSM}/{name}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn ksm_write(name: &str, v: u64) {
    std::fs::write(format!("{KSM}/{name}"), v.to_string())
        .unwrap_or_else(|e| panic!("write {KSM}/{name}: {e}"));
}

/// Restores the KSM settings it found when dropped.
struct KsmGuard {
    run: u64,
    pages_to_scan: u64,
    sleep_millisecs: u64,
}

impl KsmGuard {
    fn take() -> Self {
        Self {
            run: ksm_read("run"),
            pages_to_scan: ksm_read("pages_to_scan"),
            sleep_millisecs: ksm_read("sleep_millisecs"),
        }
    }
}

impl Drop for KsmGuard {
    fn drop(&mut self) {
        ksm_write("run", 0);
        ksm_write("pages_to_scan", self.pages_to_scan);
        ksm_write("sleep_millisecs", self.sleep_millisecs);
        ksm_write("run", self.run);
        eprintln!(
            "# ksm restored: run={} pages_to_scan={} sleep_millisecs={}",
            self.run, self.pages_to_scan, self.sleep_millisecs
        );
    }
}

/// utime + stime of a process, in seconds (USER_HZ is 100 on Linux).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Fields after the comm: state is index 0, utime 11, stime 12.
    (t(11) + t(12)) as f64 / 100.0
}

fn ksmd_pid() -> Option<String> {
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let e = e.ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == "ksmd").then(|| e.file_name().to_string_lossy().into_owned())
    })
}

fn missing() -> Option<String> {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Some("/dev/kvm missing or not accessible".into());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    if !root {
        return Some("not root (pagemap frames, /sys/kernel/mm/ksm)".into());
    }
    if !Path::new(KSM).join("run").exists() {
        return Some("kernel without KSM (/sys/kernel/mm/ksm)".into());
    }
    if std::process::Command::new("mkfs.ext4")
        .arg("-V")
        .output()
        .is_err()
    {
        return Some("mkfs.ext4 not found (Debian package e2fsprogs)".into());
    }
    None
}

struct Images {
    paths: Vec<PathBuf>,
    sums: Vec<Vec<u32>>,
    /// Pages loaded by the 8 VMs and the distinct contents among them (zero counted once).
    loaded: u64,
    minimum: u64,
}

fn images(dir: &Path, quick: bool) -> Images {
    let mut set = ImageSet::new(dir.join("images"), if quick { 8 << 20 } else { 48 << 20 });
    set.derived = 3;
    set.change = 0.02;
    let g = generate(&set).expect("generate images");
    let paths = g.images();
    let sums = paths
        .iter()
        .map(|p| {
            std::fs::read(p)
                .unwrap()
                .chunks(PAGE)
                .map(page_checksum)
                .collect()
        })
        .collect();
    let mut loaded = 0;
    let mut distinct = HashSet::new();
    for i in 0..VMS {
        let ids: Vec<ContentId> = read_manifest(&paths[i % paths.len()]).unwrap().unwrap();
        loaded += ids.len() as u64;
        distinct.extend(ids);
    }
    eprintln!(
        "# images: {} x {} pages; 8 VMs load {loaded} pages of {} distinct contents",
        paths.len(),
        g.blocks,
        distinct.len()
    );
    Images {
        paths,
        sums,
        loaded,
        minimum: distinct.len() as u64,
    }
}

fn host(dir: &Path, name: &str) -> Host {
    Host::new(HostConfig {
        state_dir: dir.join(name),
        vm_command: vec![
            env!("CARGO_BIN_EXE_pipewright").into(),
            "memshare".into(),
            "vm".into(),
        ],
        deadline: Duration::from_secs(60),
        loader: Default::default(),
    })
}

fn start(h: &mut Host, img: &Images, i: usize, loading: Loading) -> VmId {
    let mut req = VmRequest::new(&img.paths[i % img.paths.len()], 0.0, i as u32 + 1);
    req.loading = loading;
    h.start_vm("g", &req).expect("start VM")
}

/// The guest checksums its image; every checksum must be the host's.
fn check(h: &mut Host, img: &Images, i: usize, id: VmId) {
    assert_eq!(
        h.checksum(id).expect("checksum"),
        img.sums[i % img.paths.len()],
        "guest read wrong content"
    );
}

struct Ours {
    saved_fraction: f64,
    time_to_share: f64,
    cpu: f64,
}

/// Our 8 VMs: time and host CPU from the first start until all 8 run on shared pages;
/// then each guest checksums its image (checked) and the frames behind all image pages
/// are counted.
fn ours(dir: &Path, img: &Images) -> Ours {
    let mut h = host(dir, "ours");
    h.create_group(
        "g",
        GroupConfig {
            cow_reserve_pages: 1 << 30,
        },
    )
    .unwrap();
    let (c0, t0) = (cpu_seconds("self"), Instant::now());
    let mut ids = Vec::new();
    for i in 0..VMS {
        ids.push(start(&mut h, img, i, Loading::Shared));
    }
    let time_to_share = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds("self") - c0;
    for (i, &id) in ids.iter().enumerate() {
        check(&mut h, img, i, id);
    }
    let mut seen = HashSet::new();
    let mut loaded = 0u64;
    for &id in &ids {
        let (addr, len) = h.image_range(id).unwrap();
        for f in frames(h.pid(id).unwrap(), addr, len as usize / PAGE).expect("pagemap") {
            loaded += 1;
            seen.insert(f.expect("every image page was touched by the guest"));
        }
    }
    assert_eq!(loaded, img.loaded);
    let used = seen.len() as u64;
    let saved_fraction = (loaded - used) as f64 / (img.loaded - img.minimum) as f64;
    eprintln!(
        "# ours: 8 VMs sharing after {time_to_share:.3} s, host CPU {cpu:.3} s; {loaded} pages loaded on {used} physical frames (minimum {})",
        img.minimum
    );
    Ours {
        saved_fraction,
        time_to_share,
        cpu,
    }
}

/// Mean time from start to a running guest: through the content store vs a plain copy,
/// alternating VM by VM (separate hosts).
fn load_overhead(dir: &Path, img: &Images) -> (f64, f64) {
    let mut ours = host(dir, "load-ours");
    ours.create_group(
        "g",
        GroupConfig {
            cow_reserve_pages: 1 << 30,
        },
    )
    .unwrap();
    let mut copy = host(dir, "load-copy");
    copy.create_group(
        "g",
        GroupConfig {
            cow_reserve_pages: 1 << 30,
        },
    )
    .unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..VMS {
        let t = Instant::now();
        let id = start(&mut ours, img, i, Loading::Shared);
        a.push(t.elapsed().as_secs_f64() * 1e3);
        check(&mut ours, img, i, id);
        let t = Instant::now();
        let id = start(&mut copy, img, i, Loading::Copy);
        b.push(t.elapsed().as_secs_f64() * 1e3);
        check(&mut copy, img, i, id);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    eprintln!(
        "# load per VM (ms): store {:?} / plain copy {:?}",
        a.iter().map(|x| x.round()).collect::<Vec<_>>(),
        b.iter().map(|x| x.round()).collect::<Vec<_>>()
    );
    (mean(&a), mean(&b))
}

/// MB/s of loading every image into a fresh store, staged and inline alternating,
/// `rounds` each after one warm-up of each: (staged median, inline median).
fn loader_throughput(dir: &Path, img: &Images, rounds: usize) -> (f64, f64) {
    let bytes: u64 = img
        .paths
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let path = dir.join("loader-store");
    let run = |staged: bool| -> f64 {
        let mut store = ContentStore::create(&path).unwrap();
        let t = Instant::now();
        let mut pages = 0;
        for p in &img.paths {
            let mut image = Image::open(p).unwrap();
            let (_, stats) = if staged {
                store.load(&mut image)
            } else {
                store.load_inline(&mut image)
            }
            .expect("load");
            pages += stats.pages;
        }
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(pages * PAGE as u64, bytes);
        drop(store);
        let _ = std::fs::remove_file(&path);
        bytes as f64 / secs / 1e6
    };
    run(true);
    run(false);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        a.push(run(true));
        b.push(run(false));
    }
    eprintln!(
        "# loader MB/s over {} MB per round ({:?}): staged {:?} / inline {:?}",
        bytes / 1_000_000,
        LoaderConfig::default(),
        a.iter().map(|x| x.round()).collect::<Vec<_>>(),
        b.iter().map(|x| x.round()).collect::<Vec<_>>()
    );
    (common::median(a), common::median(b))
}

struct Ksm {
    time_to_share: f64,
    capped: bool,
    cpu: f64,
    saved_fraction: f64,
}

fn ksm(dir: &Path, img: &Images, pages_to_scan: u64, cap: Duration) -> Ksm {
    let _guard = KsmGuard::take();
    ksm_write("run", 0);
    ksm_write("pages_to_scan", pages_to_scan);
    ksm_write("sleep_millisecs", 20);
    let base = ksm_read("pages_sharing");
    let ksmd = ksmd_pid().expect("ksmd thread");
    let c0 = cpu_seconds(&ksmd);
    let mut h = host(dir, "ksm");
    h.create_group(
        "g",
        GroupConfig {
            cow_reserve_pages: 1 << 30,
        },
    )
    .unwrap();
    let t0 = Instant::now();
    ksm_write("run", 1);
    for i in 0..VMS {
        let id = start(&mut h, img, i, Loading::CopyMergeable);
        check(&mut h, img, i, id);
    }
    let achievable = img.loaded - img.minimum;
    let target = (achievable as f64 * 0.99).ceil() as u64;
    let mut capped = false;
    loop {
        let sharing = ksm_read("pages_sharing").saturating_sub(base);
        if sharing >= target {
            break;
        }
        if t0.elapsed() >= cap {
            capped = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let time_to_share = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(&ksmd) - c0;
    let sharing = ksm_read("pages_sharing").saturating_sub(base);
    eprintln!(
        "# ksm pages_to_scan={pages_to_scan}: {sharing} of {achievable} achievable pages merged after {time_to_share:.1} s{}; ksmd CPU {cpu:.2} s",
        if capped { " (CAPPED: time is a lower bound)" } else { "" }
    );
    Ksm {
        time_to_share,
        capped,
        cpu,
        saved_fraction: sharing as f64 / achievable as f64,
    }
}

fn result(case: &str, ours: f64, peer: &str, theirs: f64, unit: &str, better: &str) {
    println!(
        "RESULT suite=memshare case={case} ours={ours:.4} peer={peer}:{theirs:.4} unit={unit} better={better} ratio={:.4}",
        ours / theirs
    );
}

fn main() {
    if let Some(m) = missing() {
        println!("skipped: memshare suite: {m}");
        return;
    }
    let quick = common::quick();
    let filter = common::case_filter();
    let wants = |c: &str| common::wants(filter.as_deref(), c);
    let only = common::only();
    let ours_side = only != Some(common::Side::Peer);
    let peer_side = only != Some(common::Side::Ours);
    let dir = tempfile_dir();
    eprintln!(
        "# memshare suite (quick={quick}), load {}",
        common::loadavg()
    );
    let img = images(&dir, quick);
    let (cap, cap_aggr) = if quick {
        (Duration::from_secs(15), Duration::from_secs(10))
    } else {
        (Duration::from_secs(300), Duration::from_secs(120))
    };
    let default_ksm = wants("time-to-share") || wants("cpu-to-share");

    // Alternating: ours, ksm (default settings), ours, ksm-aggressive, then the load
    // overhead VM by VM.
    let o1 = ours_side.then(|| ours(&dir, &img));
    let k = (peer_side && default_ksm).then(|| ksm(&dir, &img, 100, cap));
    let o2 = ours_side.then(|| ours(&dir, &img));
    let ka = peer_side.then(|| ksm(&dir, &img, 1000, cap_aggr));
    let load = wants("load-overhead").then(|| load_overhead(&dir, &img));
    let loader = wants("loader-throughput")
        .then(|| loader_throughput(&dir, &img, if quick { 5 } else { 15 }));
    let _ = std::fs::remove_dir_all(&dir);
    if let Some((staged, inline)) = loader {
        result(
            "loader-throughput",
            staged,
            "inline-loop",
            inline,
            "MB/s",
            "higher",
        );
    }
    let (Some(o1), Some(o2), Some(ka)) = (o1, o2, ka) else {
        return;
    };
    if k.as_ref().is_some_and(|k| k.capped) || ka.capped {
        eprintln!("# a KSM run hit its cap: its time-to-share is a lower bound");
    }
    // Ours ran twice (before each KSM run): the median of the two.
    let mean = |a: f64, b: f64| common::median(vec![a, b]);
    if wants("saved-fraction") {
        result(
            "saved-fraction",
            o1.saved_fraction.min(o2.saved_fraction),
            "ksm-aggressive",
            ka.saved_fraction,
            "fraction",
            "higher",
        );
    }
    if let Some(k) = &k {
        if wants("time-to-share") {
            result(
                "time-to-share",
                mean(o1.time_to_share, o2.time_to_share),
                "ksm",
                k.time_to_share,
                "s",
                "lower",
            );
        }
        if wants("cpu-to-share") {
            result(
                "cpu-to-share",
                mean(o1.cpu, o2.cpu),
                "ksm",
                k.cpu,
                "cpu-s",
                "lower",
            );
        }
    }
    if wants("time-to-share-aggressive") {
        result(
            "time-to-share-aggressive",
            mean(o1.time_to_share, o2.time_to_share),
            "ksm-aggressive",
            ka.time_to_share,
            "s",
            "lower",
        );
    }
    if wants("cpu-to-share-aggressive") {
        result(
            "cpu-to-share-aggressive",
            mean(o1.cpu, o2.cpu),
            "ksm-aggressive",
            ka.cpu,
            "cpu-s",
            "lower",
        );
    }
    if let Some((ours_ms, copy_ms)) = load {
        result(
            "load-overhead",
            ours_ms,
            "plain-copy",
            copy_ms,
            "ms",
            "lower",
        );
    }
}

/// On tmpfs: the content stores live there.
fn tempfile_dir() -> PathBuf {
    let d = PathBuf::from(format!("/dev/shm/pw-memshare-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
