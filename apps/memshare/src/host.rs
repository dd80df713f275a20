//! The host: trust groups with their content stores, VM processes, admission against
//! each group's copy-on-write reserve, and the accounting.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use crate::error::Error;
use crate::image::Image;
use crate::loader::LoaderConfig;
use crate::payload::Program;
use crate::policy::{admit, Admission, Sharing};
use crate::store::{ContentStore, LoadMap, LoadStats};
use crate::sys::{anonymous_in_range, proc_memory, ProcMemory, PAGE};
use crate::vmproc::{Loading, Reply, VmSpec};

/// How the host runs.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Where groups keep their content store and status (put it on tmpfs).
    pub state_dir: PathBuf,
    /// The program and leading arguments that start a VM process; `--spec JSON` is
    /// appended (e.g. `pipewright memshare vm`).
    pub vm_command: Vec<OsString>,
    /// Deadline of one guest command.
    pub deadline: Duration,
    /// How images are loaded into a group's store (the loader pipeline's shape).
    pub loader: LoaderConfig,
}

/// A trust group's settings.
#[derive(Debug, Clone, Copy)]
pub struct GroupConfig {
    /// Pages guests of the group may copy on write before new VMs are refused.
    pub cow_reserve_pages: u64,
}

/// A VM to start.
#[derive(Debug, Clone)]
pub struct VmRequest {
    /// The raw image.
    pub image: PathBuf,
    /// Guest RAM (image plus free memory); `None`: the image plus 16 MiB.
    pub ram_bytes: Option<u64>,
    /// Fraction of image pages the guest's write command writes.
    pub write_fraction: f64,
    /// Seed of the write selection and markers (different VMs, different writes).
    pub seed: u32,
    /// The guest program.
    pub program: Program,
    /// How the image gets into guest memory (shared from the store by default).
    pub loading: Loading,
}

impl VmRequest {
    /// The real guest over `image`, writing `write_fraction` of its pages on command.
    pub fn new(image: impl Into<PathBuf>, write_fraction: f64, seed: u32) -> Self {
        Self {
            image: image.into(),
            ram_bytes: None,
            write_fraction,
            seed,
            program: Program::Checksummer,
            loading: Loading::Shared,
        }
    }
}

/// Identifies a VM on its host.
pub type VmId = u64;

/// Identifies an unchanged image file: device, inode, size, mtime, ctime.
type ImageKey = (u64, u64, u64, i64, i64, i64, i64);

fn image_key(path: &Path) -> Option<ImageKey> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

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
            return Err(Error::GroupExists(name.into()));
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
                return Err(Error::GroupExists(name.into()));
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

    /// Start a VM of `group` on `req.image`: admission against the group's reserve, the
    /// image loaded into the group's store (shared where its content is already there),
    /// then the VM process. Returns once the guest runs.
    pub fn start_vm(&mut self, group: &str, req: &VmRequest) -> Result<VmId, Error> {
        let r = self.start_vm_inner(group, req);
        if let Err(e) = &r {
            metrics::counter!("memshare_vm_start_errors", "kind" => error_kind(e)).increment(1);
        }
        r
    }

    fn start_vm_inner(&mut self, group: &str, req: &VmRequest) -> Result<VmId, Error> {
        self.reap();
        let loader = self.config.loader.clone();
        let broken = self.group_broken_pages(group)?;
        let mut image = Image::open(&req.image)?;
        let expected = (image.blocks() as f64 * req.write_fraction.clamp(0.0, 1.0)).ceil() as u64;
        let g = self.group(group)?;
        if let Admission::Refuse { projected, reserve } =
            admit(broken, expected, g.config.cow_reserve_pages)
        {
            g.refused += 1;
            metrics::counter!("memshare_vms_refused").increment(1);
            let _ = projected;
            return Err(Error::ReserveExhausted {
                group: group.into(),
                broken_pages: broken,
                reserve_pages: reserve,
            });
        }
        let image_bytes = image.blocks() * PAGE as u64;
        let ram_bytes = req.ram_bytes.unwrap_or(image_bytes + (16 << 20));
        if image_bytes > ram_bytes {
            return Err(crate::GuestError::ImageTooLarge {
                image_bytes,
                ram_bytes,
            }
            .into());
        }
        let key = image_key(&req.image);
        let cached = key.and_then(|k| g.cache.get(&k).map(|(m, s, _)| (m.clone(), *s)));
        let (map, load) = if req.loading == Loading::Shared {
            match cached {
                // The same unchanged file again: its blocks were hashed and compared when
                // it was first loaded; take references on the same slots.
                Some((map, stats)) if g.store.retain(&map) => {
                    metrics::counter!("memshare_image_cache_hits").increment(1);
                    (
                        map,
                        LoadStats {
                            shared: stats.pages - stats.zero,
                            stored: 0,
                            collisions: 0,
                            ..stats
                        },
                    )
                }
                _ => {
                    let (map, stats) = g.store.load_with(&mut image, &loader)?;
                    if let Some(k) = key {
                        g.cache.insert(k, (map.clone(), stats, 0));
                    }
                    (map, stats)
                }
            }
        } else {
            let pages = image.blocks();
            (
                LoadMap { slots: Vec::new() },
                LoadStats {
                    pages,
                    ..LoadStats::default()
                },
            )
        };
        let id = self.next;
        self.next += 1;
        let g = self.groups.get_mut(group).expect("checked above");
        let map_path = g.dir.join(format!("vm-{id}.map"));
        let spec = VmSpec {
            id,
            group: group.into(),
            store: g.store.path().to_path_buf(),
            map: map_path.clone(),
            loading: req.loading,
            image: req.image.clone(),
            ram_bytes,
            write_fraction: req.write_fraction,
            select_seed: req.seed,
            marker_seed: marker_seed(req.seed),
            program: req.program,
            deadline_ms: self.config.deadline.as_millis() as u64,
        };
        let started = std::fs::write(&map_path, map.to_bytes())
            .map_err(|source| Error::Store {
                path: map_path.clone(),
                source,
            })
            .and_then(|()| self.spawn(id, &spec));
        let (child, stdin, stdout) = match started {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&map_path);
                self.groups
                    .get_mut(group)
                    .expect("exists")
                    .store
                    .unload(&map);
                self.forget_unused(group, key);
                return Err(e);
            }
        };
        let mut vm = VmProc {
            group: group.into(),
            image: req.image.clone(),
            pid: child.id(),
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
            image_addr: 0,
            image_len: 0,
            window_addr: 0,
            map,
            map_path,
            load,
            write_fraction: req.write_fraction,
            cache_key: None,
        };
        match read_reply(id, &mut vm.stdout) {
            Ok(Reply::Ready {
                image_addr,
                image_len,
                window_addr,
                ..
            }) => {
                vm.image_addr = image_addr;
                vm.image_len = image_len;
                vm.window_addr = window_addr;
            }
            other => {
                let _ = vm.child.kill();
                let _ = vm.child.wait();
                let _ = std::fs::remove_file(&vm.map_path);
                self.groups
                    .get_mut(group)
                    .expect("exists")
                    .store
                    .unload(&vm.map);
                self.forget_unused(group, key);
                return Err(match other {
                    Ok(Reply::Failed(e)) => e.into(),
                    Ok(r) => Error::VmProcess {
                        vm: id,
                        reason: format!("expected ready, got {r:?}"),
                    },
                    Err(e) => e,
                });
            }
        }
        metrics::counter!("memshare_vms_started").increment(1);
        if req.loading == Loading::Shared {
            if let Some(e) =
                key.and_then(|k| self.groups.get_mut(group).and_then(|g| g.cache.get_mut(&k)))
            {
                e.2 += 1;
            }
        }
        vm.cache_key = key.filter(|_| req.loading == Loading::Shared);
        self.vms.insert(id, vm);
        Ok(id)
    }

    /// Drop a cached load map no running VM uses (its slots may be freed and reused).
    fn forget_unused(&mut self, group: &str, key: Option<ImageKey>) {
        if let (Some(g), Some(k)) = (self.groups.get_mut(group), key) {
            if g.cache.get(&k).is_some_and(|e| e.2 == 0) {
                g.cache.remove(&k);
            }
        }
    }

    fn spawn(&self, id: VmId, spec: &VmSpec) -> Result<(Child, ChildStdin, ChildStdout), Error> {
        let (prog, args) =
            self.config
                .vm_command
                .split_first()
                .ok_or_else(|| Error::VmProcess {
                    vm: id,
                    reason: "no VM command configured".into(),
                })?;
        let mut child = Command::new(prog)
            .args(args)
            .arg("--spec")
            .arg(serde_json::to_string(spec).expect("a spec serializes"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::VmProcess {
                vm: id,
                reason: format!("cannot start {prog:?}: {e}"),
            })?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        Ok((child, stdin, stdout))
    }

    fn request(&mut self, id: VmId, line: &str) -> Result<Reply, Error> {
        let vm = self.vms.get_mut(&id).ok_or(Error::UnknownVm(id))?;
        let sent = vm.stdin.as_mut().is_some_and(|s| {
            s.write_all(format!("{line}\n").as_bytes()).is_ok() && s.flush().is_ok()
        });
        if !sent {
            return Err(Error::VmProcess {
                vm: id,
                reason: "VM process is gone".into(),
            });
        }
        match read_reply(id, &mut vm.stdout)? {
            Reply::Failed(e) => {
                metrics::counter!("memshare_guest_errors").increment(1);
                Err(e.into())
            }
            r => Ok(r),
        }
    }

    /// Have VM `id`'s guest checksum its image; returns its per-page checksums.
    pub fn checksum(&mut self, id: VmId) -> Result<Vec<u32>, Error> {
        match self.request(id, "checksum")? {
            Reply::Checksums(c) => Ok(c),
            r => Err(Error::VmProcess {
                vm: id,
                reason: format!("expected checksums, got {r:?}"),
            }),
        }
    }

    /// Have VM `id`'s guest read `count` image blocks from `first` through its
    /// paravirtual block device; returns its checksum of each block and how many reads
    /// the device served so far (each by mapping the block's stored page).
    pub fn device_read(
        &mut self,
        id: VmId,
        first: u32,
        count: u32,
    ) -> Result<(Vec<u32>, u64), Error> {
        match self.request(id, &format!("devread {first} {count}"))? {
            Reply::DeviceRead { sums, reads } => Ok((sums, reads)),
            r => Err(Error::VmProcess {
                vm: id,
                reason: format!("expected device checksums, got {r:?}"),
            }),
        }
    }

    /// Have VM `id`'s guest write its selected pages; returns how many it wrote.
    pub fn write(&mut self, id: VmId) -> Result<u32, Error> {
        match self.request(id, "write")? {
            Reply::Written(n) => Ok(n),
            r => Err(Error::VmProcess {
                vm: id,
                reason: format!("expected a write count, got {r:?}"),
            }),
        }
    }

    /// Kill VM `id` with SIGKILL (as a crash would) and release what it held.
    pub fn kill(&mut self, id: VmId) -> Result<(), Error> {
        let vm = self.vms.get_mut(&id).ok_or(Error::UnknownVm(id))?;
        let _ = vm.child.kill();
        let _ = vm.child.wait();
        self.release(id);
        Ok(())
    }

    /// Stop VM `id` (halt its guest) and release what it held.
    pub fn stop(&mut self, id: VmId) -> Result<(), Error> {
        let _ = self.request(id, "halt");
        let vm = self.vms.get_mut(&id).ok_or(Error::UnknownVm(id))?;
        vm.stdin = None;
        let _ = vm.child.wait();
        self.release(id);
        Ok(())
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

    fn group_broken_pages(&self, group: &str) -> Result<u64, Error> {
        if !self.groups.contains_key(group) {
            return Err(Error::UnknownGroup(group.into()));
        }
        Ok(self
            .vms
            .values()
            .filter(|v| v.group == group)
            .map(|v| {
                anonymous_in_range(v.pid, v.image_addr, v.image_len).unwrap_or(0) / PAGE as u64
            })
            .sum())
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

fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Image(crate::ImageError::Truncated { .. }) => "truncated",
        Error::Image(crate::ImageError::Corrupt { .. }) => "corrupt",
        Error::Image(_) => "image",
        Error::Guest(crate::GuestError::ImageTooLarge { .. }) => "too_large",
        Error::Guest(_) => "guest",
        Error::UnknownGroup(_) => "unknown_group",
        Error::ReserveExhausted { .. } => "reserve",
        _ => "other",
    }
}

fn read_reply(id: VmId, out: &mut BufReader<ChildStdout>) -> Result<Reply, Error> {
    let mut line = String::new();
    match out.read_line(&mut line) {
        Ok(0) | Err(_) => Err(Error::VmProcess {
            vm: id,
            reason: "VM process exited".into(),
        }),
        Ok(_) => serde_json::from_str(&line).map_err(|e| Error::VmProcess {
            vm: id,
            reason: format!("bad reply {line:?}: {e}"),
        }),
    }
}
