//! The host: trust groups with their content stores, VM processes, admission against
//! each group's copy-on-write reserve, and the accounting.
//!
//! This file holds the host's state, groups and the VM table; [`config`] what they are
//! started with, [`start`] starting a VM, [`control`] talking to VM processes and
//! [`status`] the accounting.

mod config;
mod control;
mod start;
mod status;

pub use config::{GroupConfig, HostConfig, VmRequest};
pub use status::{live_status, GroupStatus, VmStatus};

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout};

use crate::error::Error;
use crate::store::{ContentStore, LoadMap, LoadStats};

use start::ImageKey;

/// Identifies a VM on its host.
pub type VmId = u64;

#[derive(Debug)]
struct Group {
    dir: PathBuf,
    store: ContentStore,
    config: GroupConfig,
    refused: u64,
    /// Load maps of the images the group's VMs run, with how many VMs use each.
    cache: std::collections::HashMap<ImageKey, (LoadMap, LoadStats, u32)>,
}

#[derive(Debug)]
struct VmProc {
    group: String,
    image: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pid: u32,
    image_addr: u64,
    image_len: u64,
    window_addr: u64,
    map: LoadMap,
    map_path: PathBuf,
    load: LoadStats,
    write_fraction: f64,
    cache_key: Option<ImageKey>,
}

/// VMs in trust groups on this machine, each in its own process.
#[derive(Debug)]
pub struct Host {
    config: HostConfig,
    groups: BTreeMap<String, Group>,
    vms: BTreeMap<VmId, VmProc>,
    next: VmId,
}

/// The marker seed of a VM started with write seed `seed` (its writes are
/// [`crate::marker`]`(page, marker_seed(seed))` on the pages [`crate::selected`] picks).
pub fn marker_seed(seed: u32) -> u32 {
    seed.rotate_left(16) ^ 0x5a5a_0000
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Host {
    /// A host with no groups yet.
    pub fn new(config: HostConfig) -> Self {
        Self {
            config,
            groups: BTreeMap::new(),
            vms: BTreeMap::new(),
            next: 1,
        }
    }

    /// Create trust group `name` with an empty content store. A group owned by another
    /// live host process is refused.
    pub fn create_group(&mut self, name: &str, config: GroupConfig) -> Result<(), Error> {
        if !valid_name(name) {
            return Err(Error::BadGroupName(name.into()));
        }
        if self.groups.contains_key(name) {
            return Err(Error::GroupExists {
                group: name.into(),
                owner: None,
            });
        }
        let dir = self.config.state_dir.join(name);
        let io = |source| Error::Store {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let owner = dir.join("owner");
        if let Ok(pid) = std::fs::read_to_string(&owner) {
            let pid = pid.trim();
            if pid != std::process::id().to_string() && Path::new(&format!("/proc/{pid}")).exists()
            {
                return Err(Error::GroupExists {
                    group: name.into(),
                    owner: pid.parse().ok(),
                });
            }
        }
        std::fs::write(&owner, std::process::id().to_string()).map_err(io)?;
        let store = ContentStore::create(&dir.join("store"))?;
        self.groups.insert(
            name.into(),
            Group {
                dir,
                store,
                config,
                refused: 0,
                cache: Default::default(),
            },
        );
        self.publish(name);
        Ok(())
    }

    fn group(&mut self, name: &str) -> Result<&mut Group, Error> {
        self.groups
            .get_mut(name)
            .ok_or_else(|| Error::UnknownGroup(name.into()))
    }

    fn release(&mut self, id: VmId) {
        if let Some(vm) = self.vms.remove(&id) {
            let _ = std::fs::remove_file(&vm.map_path);
            if let Some(g) = self.groups.get_mut(&vm.group) {
                g.store.unload(&vm.map);
                if let Some(k) = vm.cache_key {
                    if let Some(e) = g.cache.get_mut(&k) {
                        e.2 = e.2.saturating_sub(1);
                        if e.2 == 0 {
                            g.cache.remove(&k);
                        }
                    }
                }
            }
            metrics::counter!("memshare_vms_ended").increment(1);
        }
    }

    /// Release every VM whose process has exited (crashed, killed from outside).
    /// Returns their ids.
    pub fn reap(&mut self) -> Vec<VmId> {
        let mut dead = Vec::new();
        for (&id, vm) in self.vms.iter_mut() {
            if !matches!(vm.child.try_wait(), Ok(None)) {
                dead.push(id);
            }
        }
        for &id in &dead {
            self.release(id);
        }
        dead
    }

    /// Ids of the running VMs (of every group).
    pub fn vms(&self) -> Vec<VmId> {
        self.vms.keys().copied().collect()
    }

    /// Process id of VM `id`.
    pub fn pid(&self, id: VmId) -> Option<u32> {
        self.vms.get(&id).map(|v| v.pid)
    }

    /// Where VM `id`'s image lives in its process: `(address, length)`.
    pub fn image_range(&self, id: VmId) -> Option<(u64, u64)> {
        self.vms.get(&id).map(|v| (v.image_addr, v.image_len))
    }

    /// Where VM `id`'s block device window lives in its process (`None`: no device).
    pub fn device_window(&self, id: VmId) -> Option<u64> {
        self.vms.get(&id).map(|v| v.window_addr).filter(|&a| a != 0)
    }

    /// The group's content store (reference counts, resident size).
    pub fn store(&self, group: &str) -> Result<&ContentStore, Error> {
        self.groups
            .get(group)
            .map(|g| &g.store)
            .ok_or_else(|| Error::UnknownGroup(group.into()))
    }

    /// The load maps of the group's running VMs.
    pub fn load_maps(&self, group: &str) -> Vec<(VmId, &LoadMap)> {
        self.vms
            .iter()
            .filter(|(_, v)| v.group == group)
            .map(|(&id, v)| (id, &v.map))
            .collect()
    }

    /// The write fraction VM `id` was started with.
    pub fn write_fraction(&self, id: VmId) -> Option<f64> {
        self.vms.get(&id).map(|v| v.write_fraction)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for id in self.vms() {
            let _ = self.kill(id);
        }
        for g in self.groups.values() {
            let _ = std::fs::remove_dir_all(&g.dir);
        }
    }
}
