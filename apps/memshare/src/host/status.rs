//! Status and accounting: per VM and per group, live figures from the kernel, and the
//! status file `pipewright memshare status` reads.

use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::policy::Sharing;
use crate::store::LoadStats;
use crate::sys::{anonymous_in_range, proc_memory, ProcMemory, PAGE};

use super::{Host, VmId};

/// One VM in a status report.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VmStatus {
    /// Its id.
    pub id: VmId,
    /// Its group.
    pub group: String,
    /// Its process.
    pub pid: u32,
    /// Whether the process is alive.
    pub alive: bool,
    /// The image it runs.
    pub image: PathBuf,
    /// Where its image lives in its process (for pagemap inspection).
    pub image_addr: u64,
    /// Bytes of image memory.
    pub image_len: u64,
    /// What loading its image did.
    pub load: LoadStats,
    /// Image pages it has copied on write (or zero pages it touched).
    pub broken_pages: u64,
    /// RSS/PSS/USS of its process.
    pub memory: ProcMemory,
}

/// One trust group in a status report.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GroupStatus {
    /// Its name.
    pub name: String,
    /// Its content store file.
    pub store: PathBuf,
    /// Copy-on-write reserve in pages.
    pub reserve_pages: u64,
    /// VMs refused so far (reserve exhausted).
    pub refused: u64,
    /// Distinct pages the store holds (its index).
    pub stored_pages: u64,
    /// Pages the store file occupies in memory (the kernel's count).
    pub store_resident_pages: u64,
    /// References from loaded images to store pages.
    pub store_refs: u64,
    /// Image pages loaded into the group's VMs.
    pub loaded_pages: u64,
    /// Zero pages among them (never stored).
    pub zero_pages: u64,
    /// Pages the group's guests copied on write.
    pub broken_pages: u64,
    /// Loaded vs used vs minimum pages.
    pub sharing: Sharing,
    /// The group's VMs.
    pub vms: Vec<VmStatus>,
}

impl GroupStatus {
    /// Re-read the live figures (VM processes, the store file) from the kernel.
    pub fn refresh(&mut self) {
        if let Ok(m) = std::fs::metadata(&self.store) {
            use std::os::unix::fs::MetadataExt;
            self.store_resident_pages = m.blocks() * 512 / PAGE as u64;
        }
        self.broken_pages = 0;
        for vm in &mut self.vms {
            vm.alive = Path::new(&format!("/proc/{}", vm.pid)).exists();
            if vm.alive {
                vm.memory = proc_memory(vm.pid).unwrap_or_default();
                vm.broken_pages = anonymous_in_range(vm.pid, vm.image_addr, vm.image_len)
                    .unwrap_or(0)
                    / PAGE as u64;
            }
            self.broken_pages += vm.broken_pages;
        }
        self.sharing.used = self.store_resident_pages + self.broken_pages;
    }
}

/// Read every group's last status under `state_dir` and refresh its live figures.
pub fn live_status(state_dir: &Path) -> Result<Vec<GroupStatus>, Error> {
    let io = |source| Error::Store {
        path: state_dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(state_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(e)),
    };
    for e in entries {
        let p = e.map_err(io)?.path().join("status.json");
        if let Ok(text) = std::fs::read_to_string(&p) {
            if let Ok(mut g) = serde_json::from_str::<GroupStatus>(&text) {
                g.refresh();
                out.push(g);
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

impl Host {
    /// What the group's live VMs hold of its copy-on-write reserve: each the pages it
    /// declared it would write or the pages it broke so far, whichever is more (a VM
    /// admitted but not yet writing still holds its share); and the pages broken so far.
    pub(super) fn group_reserve_use(&self, group: &str) -> Result<(u64, u64), Error> {
        if !self.groups.contains_key(group) {
            return Err(Error::UnknownGroup(group.into()));
        }
        let (mut held, mut broken) = (0u64, 0u64);
        for v in self.vms.values().filter(|v| v.group == group) {
            let b = anonymous_in_range(v.pid, v.image_addr, v.image_len).unwrap_or(0) / PAGE as u64;
            broken = broken.saturating_add(b);
            held = held.saturating_add(b.max(expected_writes(v.load.pages, v.write_fraction)));
        }
        Ok((held, broken))
    }

    /// Status of one group and its VMs, with live figures from the kernel.
    pub fn status(&self, group: &str) -> Result<GroupStatus, Error> {
        let g = self
            .groups
            .get(group)
            .ok_or_else(|| Error::UnknownGroup(group.into()))?;
        let vms: Vec<VmStatus> = self
            .vms
            .iter()
            .filter(|(_, v)| v.group == group)
            .map(|(&id, v)| VmStatus {
                id,
                group: group.into(),
                pid: v.pid,
                alive: true,
                image: v.image.clone(),
                image_addr: v.image_addr,
                image_len: v.image_len,
                load: v.load,
                broken_pages: 0,
                memory: ProcMemory::default(),
            })
            .collect();
        let loaded: u64 = vms.iter().map(|v| v.load.pages).sum();
        let zero: u64 = vms.iter().map(|v| v.load.zero).sum();
        let mut s = GroupStatus {
            name: group.into(),
            store: g.store.path().to_path_buf(),
            reserve_pages: g.config.cow_reserve_pages,
            refused: g.refused,
            stored_pages: g.store.index().live_slots(),
            store_resident_pages: 0,
            store_refs: g.store.index().total_refs(),
            loaded_pages: loaded,
            zero_pages: zero,
            broken_pages: 0,
            sharing: Sharing {
                loaded,
                used: 0,
                minimum: g.store.index().distinct_ids(),
            },
            vms,
        };
        s.refresh();
        Ok(s)
    }

    /// Write the group's status where `pipewright memshare status` finds it (the caller
    /// decides how often: it reads every VM's smaps).
    pub fn publish(&self, group: &str) {
        if let (Ok(s), Some(g)) = (self.status(group), self.groups.get(group)) {
            let tmp = g.dir.join("status.json.tmp");
            if std::fs::write(&tmp, serde_json::to_vec_pretty(&s).unwrap_or_default()).is_ok() {
                let _ = std::fs::rename(&tmp, g.dir.join("status.json"));
            }
        }
    }
}

/// Pages a VM of `pages` image pages says it will write at `write_fraction`.
pub(super) fn expected_writes(pages: u64, write_fraction: f64) -> u64 {
    let fraction = if write_fraction.is_nan() {
        1.0
    } else {
        write_fraction.clamp(0.0, 1.0)
    };
    (pages as f64 * fraction).ceil() as u64
}
