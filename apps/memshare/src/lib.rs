//! **pipewright-memshare**: real KVM guests that share one copy of common image content
//! per trust group from the moment it is loaded, with copy-on-write.
//!
//! # Mechanism
//!
//! Content-scanning deduplication (Linux KSM, VMware TPS) finds equal pages after the
//! fact by scanning memory. This crate shares them **as they are loaded**, in the spirit
//! of Satori's sharing-aware block devices, but without a modified guest:
//!
//! 1. **Load tracking.** The host reads a VM's raw image block by block ([`Image`]); each
//!    4 KiB block gets a content id (SHA-256, [`ContentId`]), checked against the image's
//!    manifest when it has one, so a truncated or corrupted image is refused, not loaded.
//!    The load runs on pipewright stages ([`ContentStore::load`], shaped by
//!    [`LoaderConfig`]): a source reads chunks of blocks, a replicated `hash` stage
//!    computes and checks the ids on several workers (output kept in image order), and
//!    one `place` stage owning the store's index shares or stores each page (step 2).
//! 2. **One copy per distinct page.** Each trust group has a [`ContentStore`]: a file on
//!    tmpfs holding one copy of every distinct non-zero page. A block whose id is known is
//!    compared byte for byte with the stored page before it is shared; a hash collision
//!    gets its own slot ([`ContentIndex::share`]). The result is a [`LoadMap`]: image
//!    block → store slot → guest page.
//! 3. **Mapping, not copying.** The VM process ([`vm_main`], one process per VM) reserves
//!    anonymous memory for the image and maps each run of store slots over it with
//!    `mmap(MAP_PRIVATE | MAP_FIXED)`. KVM's memory region points at that range, so every
//!    VM of the group reads the store's physical pages; a guest write makes the kernel copy
//!    that page for that VM only (copy-on-write). Zero blocks stay anonymous memory (reads
//!    see the kernel's zero page; nothing is stored).
//! 4. **Run-time reads.** Each VM also has a paravirtual block device ([`BlockDevice`])
//!    over its image: the guest writes a block number and a window page to its ports, and
//!    the VMM serves the read by mapping the block's stored page over that window page
//!    (`MAP_PRIVATE`), not by copying it — Satori's sharing-aware block device, with the
//!    same frames every other reader of that content in the group uses.
//! 5. **Image reuse.** A group remembers the load map of each image file its VMs run
//!    (keyed by device, inode, size, mtime and ctime): another VM on the unchanged file
//!    takes references on the same slots without reading and hashing it again.
//! 6. **Reference counts.** Every mapped block holds a reference to its slot; when a VM
//!    ends (stopped, crashed, `kill -9`: [`Host::reap`]) its references go, and slots no
//!    VM maps any more are punched out of the store file, returning their memory.
//!
//! The VMM ([`Vm`]) is built on `kvm-ioctls`: one VM, memory regions for low memory
//! (parameters, page tables, code, results), the image and free RAM, one vCPU in 64-bit
//! mode running a guest program assembled at run time with `iced-x86` ([`Program`]). The
//! guest checksums every image page (FNV-1a over 32-bit words, [`page_checksum`]), writes
//! markers into a configurable fraction of pages ([`selected`], [`marker`]) and reports
//! over port I/O. Guests that triple-fault, loop past their deadline, touch unknown ports
//! or unmapped guest memory stop with a typed [`GuestError`]; the host and other VMs go on.
//!
//! # Trust model
//!
//! Page sharing across tenants is a side channel (timing of copy-on-write and of cache
//! hits reveals whether another tenant holds a page), which is why VMware disabled
//! cross-VM TPS by default. Here a **trust group** is the sharing boundary: each group has
//! its own store file, VM processes map only their group's store, and no page of one
//! group's store is ever mapped by a VM of another group. Within a group, guests see each
//! other's *unmodified* image pages only (which they loaded themselves anyway); writes are
//! private. The tests check this with `/proc/PID/pagemap` as root: no physical frame is
//! mapped by VMs of two tenants, while VMs of one tenant share theirs. The only frame
//! common to everybody is the kernel's zero page, which holds no tenant data.
//!
//! Copy-on-write turns shared pages back into private ones, so a group's memory can grow
//! after admission. Each group has a **copy-on-write reserve** ([`GroupConfig`]): a new VM
//! is admitted only while the pages already broken plus the pages it declares it will
//! write fit in the reserve ([`admit`]); beyond it the host refuses VMs
//! ([`Error::ReserveExhausted`]) instead of over-committing into the OOM killer.
//!
//! # Accounting
//!
//! [`Host::status`] reports per VM RSS/PSS/USS (`/proc/PID/smaps_rollup`) and the image
//! pages it broke (anonymous memory inside its image range, `/proc/PID/smaps`), and per
//! group pages loaded, stored (index and kernel count of the store file), referenced,
//! broken, and saved against the achievable maximum ([`Sharing`]).
//!
//! # Example
//!
//! Two images that differ in one page, loaded into one group's store: the second load
//! shares everything but that page.
//!
//! ```
//! use pipewright_memshare::{ContentId, ContentStore, Image, write_manifest, PAGE};
//!
//! let dir = std::env::temp_dir().join(format!("memshare-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let a: Vec<u8> = (0..8 * PAGE).map(|i| (i / PAGE + 1) as u8).collect();
//! let mut b = a.clone();
//! b[3 * PAGE] ^= 0xff;
//! for (name, bytes) in [("a.raw", &a), ("b.raw", &b)] {
//!     std::fs::write(dir.join(name), bytes)?;
//!     let ids: Vec<ContentId> = bytes.chunks(PAGE).map(ContentId::of).collect();
//!     write_manifest(&dir.join(name), &ids)?;
//! }
//! let mut store = ContentStore::create(&dir.join("store"))?;
//! let (_, first) = store.load(&mut Image::open(&dir.join("a.raw"))?)?;
//! let (map_b, second) = store.load(&mut Image::open(&dir.join("b.raw"))?)?;
//! assert_eq!((first.stored, first.shared), (8, 0));
//! assert_eq!((second.stored, second.shared), (1, 7));
//! assert_eq!(store.index().live_slots(), 9);
//! store.unload(&map_b);
//! assert_eq!(store.index().live_slots(), 8);
//! std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Starting VMs needs `/dev/kvm`: see [`Host`] and the `pipewright memshare` command.
//!
//! # This machine's KVM
//!
//! On hosts whose KVM is PVM (`kvm_pvm`, a paravirtual KVM for nested clouds) only guest
//! code at CPL 3 runs natively; CPL 0 code is emulated instruction by instruction (about
//! 1000x slower here). The guest therefore runs its loops at CPL 3 (flat 64-bit segments
//! with DPL 3, user page tables, IOPL 3 for its port I/O), which works the same under
//! hardware-assisted KVM.

mod error;
mod host;
mod image;
mod images;
mod loader;
mod payload;
mod policy;
mod store;
mod sys;
mod vmm;
mod vmproc;

pub use error::{Error, GuestError, ImageError};
pub use host::{
    live_status, marker_seed, GroupConfig, GroupStatus, Host, HostConfig, VmId, VmRequest, VmStatus,
};
pub use image::{
    achievable, is_zero, manifest_path, parse_manifest, read_manifest, write_manifest, Achievable,
    ContentId, Image,
};
pub use images::{generate, Generated, ImageSet};
pub use loader::LoaderConfig;
pub use payload::{marker, page_checksum, selected, write_threshold, Params, Program, DEV_PAGES};
pub use policy::{admit, Admission, Sharing};
pub use store::{ContentIndex, ContentStore, LoadMap, LoadStats, Placed, ZERO_SLOT};
pub use sys::{
    anonymous_in_range, frames, parse_smaps, proc_memory, GuestMemory, ProcMemory, PAGE,
};
pub use vmm::{BlockDevice, Vm, VmConfig};
pub use vmproc::{vm_main, Loading, Reply, VmSpec};
