//! Named network namespaces (`/run/netns/NAME`) and running code inside them.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use super::HostError;

/// Where named namespaces are bind-mounted (iproute2's directory).
pub const NETNS_DIR: &str = "/run/netns";

/// A named network namespace.
///
/// One made by [`Namespace::create`] is deleted when dropped (unless
/// [`keep`](Namespace::keep) was called); one found by [`Namespace::open`] is not.
/// Deleting removes the name: the namespace itself (with its interfaces) goes away
/// once nothing uses it any more (no thread inside it, no socket or TAP descriptor
/// opened in it).
#[derive(Debug)]
pub struct Namespace {
    name: String,
    path: PathBuf,
    owned: bool,
}

impl Namespace {
    /// Creates namespace `name` (fails with [`HostError::NamespaceExists`] if taken).
    pub fn create(name: &str) -> Result<Self, HostError> {
        check_name(name)?;
        prepare_dir()?;
        let path = Path::new(NETNS_DIR).join(name);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => drop(f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(HostError::NamespaceExists(name.to_string()))
            }
            Err(e) => return Err(HostError::io(format!("create {}", path.display()), e)),
        }
        let target = path.clone();
        let made = std::thread::spawn(move || -> Result<(), HostError> {
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| HostError::nix("unshare(CLONE_NEWNET)", e))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                Some("none"),
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| {
                HostError::nix(
                    format!("bind-mount the new netns on {}", target.display()),
                    e,
                )
            })
        })
        .join()
        .unwrap_or_else(|_| Err(HostError::Spec("namespace creation thread panicked".into())));
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(Self {
            name: name.to_string(),
            path,
            owned: true,
        })
    }

    /// Opens the existing namespace `name` (not deleted on drop).
    pub fn open(name: &str) -> Result<Self, HostError> {
        check_name(name)?;
        let path = Path::new(NETNS_DIR).join(name);
        if !path.exists() {
            return Err(HostError::NoSuchNamespace(name.to_string()));
        }
        Ok(Self {
            name: name.to_string(),
            path,
            owned: false,
        })
    }

    /// Whether a namespace of that name exists.
    pub fn exists(name: &str) -> bool {
        check_name(name).is_ok() && Path::new(NETNS_DIR).join(name).exists()
    }

    /// Names of all namespaces under [`NETNS_DIR`].
    pub fn list() -> Result<Vec<String>, HostError> {
        let dir = match std::fs::read_dir(NETNS_DIR) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(HostError::io(format!("list {NETNS_DIR}"), e)),
        };
        let mut names: Vec<String> = dir
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Deletes namespace `name` by name: unmounts and removes its file. Missing is
    /// not an error.
    pub fn remove(name: &str) -> Result<(), HostError> {
        check_name(name)?;
        let path = Path::new(NETNS_DIR).join(name);
        match umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(HostError::nix(format!("unmount {}", path.display()), e)),
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(HostError::io(format!("remove {}", path.display()), e)),
        }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its file under [`NETNS_DIR`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the namespace file (for `setns`, or to move a link into it by fd).
    pub fn file(&self) -> Result<File, HostError> {
        File::open(&self.path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => HostError::NoSuchNamespace(self.name.clone()),
            _ => HostError::io(format!("open {}", self.path.display()), e),
        })
    }

    /// Runs `f` on a helper thread inside this namespace and returns its result.
    /// Sockets, TAP devices and netlink connections `f` opens belong to the
    /// namespace and may be used from any thread afterwards. A panic in `f` is
    /// propagated.
    pub fn run<T, F>(&self, f: F) -> Result<T, HostError>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let file = self.file()?;
        std::thread::scope(|s| {
            let worker = std::thread::Builder::new()
                .name(format!("netns {}", self.name))
                .spawn_scoped(s, move || {
                    setns(&file, CloneFlags::CLONE_NEWNET)
                        .map_err(|e| HostError::nix(format!("setns into {}", self.name), e))?;
                    Ok(f())
                })
                .map_err(|e| HostError::io("spawn a namespace thread", e))?;
            match worker.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Keeps the namespace when this handle is dropped.
    pub fn keep(mut self) -> Self {
        self.owned = false;
        self
    }

    /// Deletes the namespace now, reporting failure (drop does it silently).
    pub fn delete(mut self) -> Result<(), HostError> {
        self.owned = false;
        Self::remove(&self.name)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if self.owned {
            let _ = Self::remove(&self.name);
        }
    }
}

/// Runs `f` inside `ns` (see [`Namespace::run`]).
pub fn in_netns<T, F>(ns: &Namespace, f: F) -> Result<T, HostError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    ns.run(f)
}

fn check_name(name: &str) -> Result<(), HostError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(HostError::Spec(format!(
            "bad namespace name {name:?}: 1 to 200 of [A-Za-z0-9._-]"
        )))
    }
}

/// Creates `/run/netns` and makes it a shared mount point, as iproute2 does, so
/// namespace mounts propagate to mount namespaces created later.
fn prepare_dir() -> Result<(), HostError> {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return Ok(());
    }
    std::fs::create_dir_all(NETNS_DIR)
        .map_err(|e| HostError::io(format!("create {NETNS_DIR}"), e))?;
    let shared = || {
        mount(
            None::<&str>,
            NETNS_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => {}
        Err(nix::errno::Errno::EINVAL) => {
            // Not a mount point yet: bind it onto itself, then mark it shared.
            mount(
                Some(NETNS_DIR),
                NETNS_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| HostError::nix(format!("bind-mount {NETNS_DIR} on itself"), e))?;
            shared().map_err(|e| HostError::nix(format!("make {NETNS_DIR} a shared mount"), e))?;
        }
        Err(e) => {
            return Err(HostError::nix(
                format!("make {NETNS_DIR} a shared mount"),
                e,
            ))
        }
    }
    *done = true;
    Ok(())
}
