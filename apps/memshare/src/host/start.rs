//! Starting a VM: admission against the group's reserve, the image loaded into the
//! group's store (or its earlier load reused), then the VM process.

use std::io::BufReader;

use crate::error::Error;
use crate::image::Image;
use crate::policy::{admit, Admission};
use crate::store::{LoadMap, LoadStats};
use crate::sys::PAGE;
use crate::vmproc::{Loading, Reply, VmSpec};

use super::control::read_reply;
use super::{marker_seed, Host, VmId, VmProc, VmRequest};

/// Identifies an unchanged image file: device, inode, size, mtime, ctime.
pub(super) type ImageKey = (u64, u64, u64, i64, i64, i64, i64);

/// The key of the file `image` has open (not of whatever its path names now: a file
/// renamed over it between the open and this call must not take its cached load).
fn image_key(image: &Image) -> Option<ImageKey> {
    use std::os::unix::fs::MetadataExt;
    let m = image.metadata().ok()?;
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

impl Host {
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
        let (held, broken) = self.group_reserve_use(group)?;
        let mut image = Image::open(&req.image)?;
        let expected = super::status::expected_writes(image.blocks(), req.write_fraction);
        let g = self.group(group)?;
        if let Admission::Refuse { reserve, .. } = admit(held, expected, g.config.cow_reserve_pages)
        {
            g.refused += 1;
            metrics::counter!("memshare_vms_refused").increment(1);
            return Err(Error::ReserveExhausted {
                group: group.into(),
                requested_pages: expected,
                held_pages: held,
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
        let key = image_key(&image);
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
        let reply_limit = self.reply_limit();
        match read_reply(id, &mut vm.stdout, reply_limit) {
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
                        reason: format!("expected ready, got {}", r.kind()),
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
    pub(super) fn forget_unused(&mut self, group: &str, key: Option<ImageKey>) {
        if let (Some(g), Some(k)) = (self.groups.get_mut(group), key) {
            if g.cache.get(&k).is_some_and(|e| e.2 == 0) {
                g.cache.remove(&k);
            }
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
