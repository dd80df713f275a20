//! `pipewright memshare`: VMs on KVM sharing one copy of common image content per
//! trust group — run VMs, generate layered images, show live status.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use pipewright::memshare::{
    generate, live_status, marker, marker_seed, page_checksum, selected, vm_main, write_threshold,
    GroupConfig, GroupStatus, Host, HostConfig, Image, ImageSet, VmRequest, VmSpec, PAGE,
};

const DEFAULT_STATE: &str = "/dev/shm/pipewright-memshare";

/// VM memory sharing on KVM.
#[derive(Args, Debug)]
pub(crate) struct MemshareArgs {
    #[command(subcommand)]
    command: MemshareCommand,
}

#[derive(Subcommand, Debug)]
enum MemshareCommand {
    /// Start N VMs of one trust group on an image; each guest checksums its image (checked
    /// against the host's), writes its share of pages, checks again; then keep them
    /// running (status published for `memshare status`) until Ctrl-C.
    Run(RunArgs),
    /// Generate a base ext4 image from real files and derived images with a known share
    /// of changed blocks (with manifests).
    Images(ImagesArgs),
    /// Show every group's sharing and each VM's memory, live from the kernel.
    Status(StatusArgs),
    /// One VM process (started by `run`).
    #[command(hide = true)]
    Vm(VmArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The raw image (a manifest next to it, `<image>.manifest`, is verified).
    #[arg(long)]
    image: PathBuf,
    /// How many VMs.
    #[arg(long, default_value_t = 4)]
    vms: usize,
    /// The trust group: VMs of different groups never share a page.
    #[arg(long)]
    group: String,
    /// Fraction of image pages each guest writes (copy-on-write breaks).
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    write_fraction: f64,
    /// Copy-on-write reserve of the group: new VMs are refused beyond it.
    #[arg(long, default_value_t = 1024)]
    cow_reserve_mib: u64,
    /// Guest RAM per VM (default: the image plus 16 MiB; at most 4095).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..4096))]
    ram_mib: Option<u64>,
    /// Deadline of one guest command, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    deadline_ms: u64,
    /// State directory (content stores, status), on tmpfs.
    #[arg(long, default_value = DEFAULT_STATE)]
    state_dir: PathBuf,
    /// Print the status once the VMs run and exit (instead of running until Ctrl-C).
    #[arg(long)]
    once: bool,
}

#[derive(Args, Debug)]
struct ImagesArgs {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// MiB of file content in the base image.
    #[arg(long, default_value_t = 64)]
    base_mib: u64,
    /// Number of derived images.
    #[arg(long, default_value_t = 3)]
    derived: usize,
    /// Fraction of the base's non-zero blocks each derived image changes.
    #[arg(long, default_value_t = 0.02)]
    change: f64,
    /// Source directories (default /usr/share/doc, /usr/lib).
    #[arg(long)]
    source: Vec<PathBuf>,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// State directory of the running hosts.
    #[arg(long, default_value = DEFAULT_STATE)]
    state_dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Refresh every second until Ctrl-C.
    #[arg(long)]
    watch: bool,
}

#[derive(Args, Debug)]
struct VmArgs {
    /// The VM spec (JSON).
    #[arg(long)]
    spec: String,
}

pub(crate) fn run(args: MemshareArgs) -> anyhow::Result<()> {
    match args.command {
        MemshareCommand::Run(a) => run_vms(a),
        MemshareCommand::Images(a) => images(a),
        MemshareCommand::Status(a) => status(a),
        MemshareCommand::Vm(a) => {
            let spec: VmSpec = serde_json::from_str(&a.spec).context("bad --spec")?;
            std::process::exit(vm_main(&spec))
        }
    }
}

fn mib(pages: u64) -> f64 {
    (pages * PAGE as u64) as f64 / (1 << 20) as f64
}

fn render(groups: &[GroupStatus]) -> String {
    let mut s = String::new();
    for g in groups {
        s += &format!(
            "group {}: {} VMs, loaded {:.1} MiB, store {:.1} MiB ({} pages, {} refs), broken {:.1} MiB, saved {:.1} MiB of {:.1} MiB achievable ({:.4}), reserve {:.0} MiB, refused {}\n",
            g.name,
            g.vms.len(),
            mib(g.loaded_pages),
            mib(g.store_resident_pages),
            g.stored_pages,
            g.store_refs,
            mib(g.broken_pages),
            mib(g.sharing.saved()),
            mib(g.sharing.achievable()),
            g.sharing.fraction(),
            mib(g.reserve_pages),
            g.refused,
        );
        s += "  vm   pid      alive  rss MiB  pss MiB  uss MiB  broken  image\n";
        for v in &g.vms {
            s += &format!(
                "  {:<4} {:<8} {:<6} {:>7.1}  {:>7.1}  {:>7.1}  {:>6}  {}\n",
                v.id,
                v.pid,
                v.alive,
                v.memory.rss as f64 / (1 << 20) as f64,
                v.memory.pss as f64 / (1 << 20) as f64,
                v.memory.uss as f64 / (1 << 20) as f64,
                v.broken_pages,
                v.image.display()
            );
        }
    }
    if groups.is_empty() {
        s += "no groups running\n";
    }
    s
}

fn run_vms(a: RunArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let mut host = Host::new(HostConfig {
        state_dir: a.state_dir.clone(),
        vm_command: vec![exe.into(), "memshare".into(), "vm".into()],
        deadline: Duration::from_millis(a.deadline_ms),
        loader: Default::default(),
    });
    host.create_group(
        &a.group,
        GroupConfig {
            cow_reserve_pages: a.cow_reserve_mib.saturating_mul(1 << 20) / PAGE as u64,
        },
    )?;
    let bytes = Image::open(&a.image)?.read_all()?;
    let sums: Vec<u32> = bytes.chunks(PAGE).map(page_checksum).collect();
    let mut ids = Vec::new();
    for i in 0..a.vms {
        let mut req = VmRequest::new(&a.image, a.write_fraction, i as u32 + 1);
        req.ram_bytes = a.ram_mib.map(|m| m << 20);
        let id = host.start_vm(&a.group, &req)?;
        if host.checksum(id)? != sums {
            bail!("VM {id}: guest checksums differ from the image's");
        }
        ids.push((id, i as u32 + 1));
    }
    println!(
        "{} VMs running, every guest read exactly its image",
        ids.len()
    );
    if a.write_fraction > 0.0 {
        for &(id, seed) in &ids {
            let n = host.write(id)?;
            let mut expect = sums.clone();
            let t = write_threshold(a.write_fraction);
            for (i, e) in expect.iter_mut().enumerate() {
                if selected(i as u32, seed, t) {
                    let mut page = bytes[i * PAGE..(i + 1) * PAGE].to_vec();
                    page[..4].copy_from_slice(&marker(i as u32, marker_seed(seed)).to_le_bytes());
                    *e = page_checksum(&page);
                }
            }
            if host.checksum(id)? != expect {
                bail!("VM {id}: checksums after its writes are wrong");
            }
            println!("VM {id} wrote {n} pages and sees exactly its writes");
        }
    }
    host.publish(&a.group);
    print!("{}", render(&[host.status(&a.group)?]));
    if a.once {
        return Ok(());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let f = stop.clone();
    ctrlc::set_handler(move || f.store(true, Ordering::SeqCst))?;
    println!("running; `pipewright memshare status` shows them live; Ctrl-C stops");
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(500));
        for id in host.reap() {
            println!("VM {id} exited; its pages were released");
        }
        host.publish(&a.group);
    }
    Ok(())
}

fn images(a: ImagesArgs) -> anyhow::Result<()> {
    let mut set = ImageSet::new(&a.out, a.base_mib << 20);
    set.derived = a.derived;
    set.change = a.change;
    if !a.source.is_empty() {
        set.sources = a.source;
    }
    let g = generate(&set)?;
    println!(
        "base {} ({} files, {} blocks)",
        g.base.display(),
        g.files,
        g.blocks
    );
    for (p, n) in &g.derived {
        println!("derived {} ({n} blocks changed)", p.display());
    }
    let ach = g.achievable;
    println!(
        "one VM per image: {} pages loaded, {} zero, {} distinct non-zero: at most {} pages ({:.1} MiB) can be saved",
        ach.loaded,
        ach.zero,
        ach.distinct,
        ach.max_saved(),
        mib(ach.max_saved())
    );
    Ok(())
}

fn status(a: StatusArgs) -> anyhow::Result<()> {
    loop {
        let groups = live_status(&a.state_dir)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&groups)?);
        } else {
            print!("{}", render(&groups));
        }
        if !a.watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
        println!();
    }
}

/// A fraction in [0, 1].
fn fraction(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!(
            "{s:?} is not a fraction: use a number from 0 to 1, e.g. 0.1"
        )),
    }
}
