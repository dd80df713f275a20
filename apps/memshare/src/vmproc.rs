//! The VM process: `pipewright memshare vm --spec JSON` (or the crate's
//! `pipewright-memshare-vm` binary). It maps the image from its group's content store
//! (`MAP_PRIVATE`, run by run as the load map says), starts the VM and answers the host's
//! commands on stdin with one JSON line each on stdout.

use std::fs::File;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::GuestError;
use crate::payload::{write_threshold, Params, Program, CMD_HALT};
use crate::store::LoadMap;
use crate::sys::{GuestMemory, PAGE};
use crate::vmm::{BlockDevice, Vm, VmConfig};

/// Everything a VM process needs, passed as one JSON argument.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VmSpec {
    /// The VM's id on its host.
    pub id: u64,
    /// Its trust group.
    pub group: String,
    /// The group's content store file.
    pub store: PathBuf,
    /// The load map file (`u32` slot per image block).
    pub map: PathBuf,
    /// How the image gets into guest memory.
    pub loading: Loading,
    /// The image file (read directly by the copy loadings).
    pub image: PathBuf,
    /// Guest RAM for the image and free memory, in bytes.
    pub ram_bytes: u64,
    /// Fraction of image pages the guest's write command writes.
    pub write_fraction: f64,
    /// Seed of the write selection.
    pub select_seed: u32,
    /// Seed of the written markers.
    pub marker_seed: u32,
    /// The guest program.
    pub program: Program,
    /// Deadline of one guest command, in milliseconds.
    pub deadline_ms: u64,
}

/// How a VM's image gets into its guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loading {
    /// Mapped `MAP_PRIVATE` from the group's content store: shared from the start.
    #[default]
    Shared,
    /// A plain copy into private anonymous memory (no sharing).
    Copy,
    /// A plain copy into anonymous memory marked `MADV_MERGEABLE`, for KSM to merge
    /// later (what QEMU does).
    CopyMergeable,
}

/// One line from the VM process.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The VM runs; its image is at `image_addr..+image_len` in process `pid`.
    Ready {
        /// The VM process.
        pid: u32,
        /// Host virtual address of guest image memory.
        image_addr: u64,
        /// Its length.
        image_len: u64,
        /// Host virtual address of the block device window (0: no device).
        window_addr: u64,
    },
    /// The guest's checksum per image page.
    Checksums(Vec<u32>),
    /// Pages the guest wrote.
    Written(u32),
    /// The guest's checksums of blocks read through the block device, and the device's
    /// reads so far.
    DeviceRead {
        /// Checksum per block read.
        sums: Vec<u32>,
        /// Reads the device served so far.
        reads: u64,
    },
    /// The guest halted on request.
    Halted,
    /// The VM failed (it is gone).
    Failed(GuestError),
}

impl Reply {
    /// What kind of reply it is, for messages (a `Checksums` reply can hold thousands
    /// of numbers).
    pub fn kind(&self) -> &'static str {
        match self {
            Reply::Ready { .. } => "ready",
            Reply::Checksums(_) => "checksums",
            Reply::Written(_) => "a write count",
            Reply::DeviceRead { .. } => "device checksums",
            Reply::Halted => "halted",
            Reply::Failed(_) => "a failure",
        }
    }
}

fn copy_image(spec: &VmSpec) -> Result<GuestMemory, GuestError> {
    use std::io::Read;
    let setup = |what: &str, e: std::io::Error| GuestError::Setup(format!("{what}: {e}"));
    let mut f = File::open(&spec.image).map_err(|e| setup("image", e))?;
    let len = f.metadata().map_err(|e| setup("image", e))?.len() as usize;
    let mut mem = GuestMemory::anonymous(len).map_err(|e| setup("image memory", e))?;
    mem.advise(libc::MADV_NOHUGEPAGE)
        .map_err(|e| setup("madvise", e))?;
    if spec.loading == Loading::CopyMergeable {
        mem.advise(libc::MADV_MERGEABLE)
            .map_err(|e| setup("madvise(MADV_MERGEABLE)", e))?;
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < len {
        let n = f.read(&mut buf).map_err(|e| setup("image", e))?;
        if n == 0 {
            return Err(GuestError::Setup("image shrank while loading".into()));
        }
        mem.write(at, &buf[..n])
            .map_err(|e| setup("image memory", e))?;
        at += n;
    }
    Ok(mem)
}

fn map_image(spec: &VmSpec) -> Result<(GuestMemory, Option<BlockDevice>), GuestError> {
    let setup = |what: &str, e: std::io::Error| GuestError::Setup(format!("{what}: {e}"));
    if spec.loading != Loading::Shared {
        return Ok((copy_image(spec)?, None));
    }
    let bytes = std::fs::read(&spec.map).map_err(|e| setup("load map", e))?;
    let map = LoadMap::from_bytes(&bytes)
        .ok_or_else(|| GuestError::Setup("load map is not a whole number of slots".into()))?;
    let mut mem =
        GuestMemory::anonymous(map.slots.len() * PAGE).map_err(|e| setup("image memory", e))?;
    // Copy-on-write must copy single pages, not 2 MiB: no transparent huge pages here.
    mem.advise(libc::MADV_NOHUGEPAGE)
        .map_err(|e| setup("madvise", e))?;
    let store = File::open(&spec.store).map_err(|e| setup("content store", e))?;
    for (page, slot, n) in map.runs() {
        mem.overlay_private(page, n, &store, u64::from(slot))
            .map_err(|e| setup("map store pages", e))?;
    }
    Ok((mem, Some(BlockDevice::new(store, map))))
}

fn send(out: &mut impl Write, r: &Reply) -> bool {
    serde_json::to_writer(&mut *out, r).is_ok()
        && out.write_all(b"\n").is_ok()
        && out.flush().is_ok()
}

/// Run the VM process for `spec` until stdin closes or a `halt`; returns the exit code
/// (0 done, 2 the guest failed, 3 setup failed).
pub fn vm_main(spec: &VmSpec) -> i32 {
    let mut out = std::io::stdout().lock();
    let start = || -> Result<Vm, GuestError> {
        let (image, device) = map_image(spec)?;
        let pages = (image.len() / PAGE) as u32;
        let config = VmConfig {
            program: spec.program,
            params: Params {
                image_pages: pages,
                write_threshold: write_threshold(spec.write_fraction),
                select_seed: spec.select_seed,
                marker_seed: spec.marker_seed,
            },
            ram_bytes: spec.ram_bytes,
        };
        Vm::start_with_device(&config, image, device)
    };
    let mut vm = match start() {
        Ok(vm) => vm,
        Err(e) => {
            send(&mut out, &Reply::Failed(e));
            return 3;
        }
    };
    let (image_addr, image_len) = vm.image_range();
    if !send(
        &mut out,
        &Reply::Ready {
            pid: std::process::id(),
            image_addr,
            image_len,
            window_addr: vm.device_window().map_or(0, |w| w.0),
        },
    ) {
        return 0;
    }
    let deadline = Duration::from_millis(spec.deadline_ms);
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let reply = match line.trim() {
            "checksum" => vm.checksum(deadline).map(Reply::Checksums),
            "write" => vm.write(deadline).map(Reply::Written),
            l if l.starts_with("devread ") => {
                let mut it = l.split_whitespace().skip(1).map(str::parse::<u32>);
                match (it.next(), it.next()) {
                    (Some(Ok(first)), Some(Ok(count))) => vm
                        .device_read(first, count, deadline)
                        .map(|sums| Reply::DeviceRead {
                            sums,
                            reads: vm.device_reads(),
                        }),
                    _ => Err(GuestError::Protocol(format!("bad devread {l:?}"))),
                }
            }
            "halt" => {
                let _ = vm.command(CMD_HALT, deadline);
                send(&mut out, &Reply::Halted);
                return 0;
            }
            other => Err(GuestError::Protocol(format!(
                "unknown host command {other:?}"
            ))),
        };
        match reply {
            Ok(r) => {
                if !send(&mut out, &r) {
                    return 0;
                }
            }
            Err(e) => {
                let protocol = matches!(e, GuestError::Protocol(_));
                send(&mut out, &Reply::Failed(e));
                if !protocol {
                    return 2;
                }
            }
        }
    }
    0
}
