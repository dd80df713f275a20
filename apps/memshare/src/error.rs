//! Error types.

use std::path::PathBuf;

/// A guest stopped or could not start. The VM is gone after any of these; the host and
/// the other VMs are not affected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum GuestError {
    /// The VM could not be created (KVM, memory regions, vCPU registers).
    #[error("VM setup failed: {0} (is /dev/kvm present and accessible?)")]
    Setup(String),
    /// The image does not fit the guest's RAM.
    #[error("image of {image_bytes} bytes does not fit {ram_bytes} bytes of guest RAM (give the VM more memory)")]
    ImageTooLarge {
        /// Bytes in the image.
        image_bytes: u64,
        /// Bytes of guest RAM available for it.
        ram_bytes: u64,
    },
    /// The guest did not finish a command before its deadline (an endless loop).
    #[error("guest missed its {ms} ms deadline (an endless loop?); the VM was stopped")]
    Deadline {
        /// The deadline in milliseconds.
        ms: u64,
    },
    /// The guest triple-faulted (an exception with no handler).
    #[error("guest triple-faulted; the VM was stopped")]
    TripleFault,
    /// The guest accessed an I/O port no device owns.
    #[error("guest {} {len} bytes at unknown port {port:#x}; the VM was stopped", if *write { "wrote" } else { "read" })]
    BadPort {
        /// The port.
        port: u16,
        /// Whether it was a write.
        write: bool,
        /// Access width.
        len: usize,
    },
    /// The guest accessed guest-physical memory that is not RAM.
    #[error("guest accessed unmapped guest-physical address {gpa:#x}; the VM was stopped")]
    BadMemoryAccess {
        /// The address.
        gpa: u64,
    },
    /// The guest halted (or was already stopped) instead of answering.
    #[error("guest halted; start a new VM")]
    Halted,
    /// The VMM stopped the vCPU (shutdown).
    #[error("vCPU interrupted by the VMM")]
    Interrupted,
    /// KVM reported an exit the VMM does not handle.
    #[error("unexpected VM exit: {0}")]
    UnexpectedExit(String),
    /// The guest broke the port protocol.
    #[error("guest protocol error: {0}")]
    Protocol(String),
}

/// A problem with an image file or its manifest.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image could not be read.
    #[error("cannot read image {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The image is empty or not a whole number of 4 KiB blocks, or shorter than its
    /// manifest says.
    #[error("image {path} is truncated: {bytes} bytes, expected {expected} (a whole number of 4096-byte blocks); regenerate or re-copy it")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
        /// The size it should have.
        expected: u64,
    },
    /// A block does not match the content id its manifest records.
    #[error("image {path} is corrupt: block {block} does not match its manifest; regenerate or re-copy it")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The first bad block.
        block: u64,
    },
    /// The manifest next to the image cannot be parsed.
    #[error("manifest {path} is unreadable: {reason}; delete it to load the image unverified")]
    BadManifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Building an image failed (mkfs.ext4 missing or failing, no source files).
    #[error("cannot build images: {0}")]
    Build(String),
}

/// Errors of the host: groups, the content store, VM processes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An image problem.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A guest problem.
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// No group of that name exists on this host.
    #[error("unknown trust group {0:?}; create it first (Host::create_group or `run --group`)")]
    UnknownGroup(String),
    /// The group already exists.
    #[error("trust group {group:?} already exists{}", owner_hint(*.owner))]
    GroupExists {
        /// The group.
        group: String,
        /// The live host process that owns it, when another one does.
        owner: Option<u32>,
    },
    /// A group name that cannot be a directory name.
    #[error("bad group name {0:?}: use letters, digits, '-' and '_'")]
    BadGroupName(String),
    /// The group's copy-on-write reserve is used up: starting another VM could push the
    /// host into the OOM killer.
    #[error("group {group:?} refuses the VM: it expects to write {requested_pages} pages, and the live VMs already hold {held_pages} of the {reserve_pages}-page copy-on-write reserve ({broken_pages} broken so far); raise --cow-reserve-mib, give the VM a lower --write-fraction, or stop VMs")]
    ReserveExhausted {
        /// The group.
        group: String,
        /// Pages the refused VM said it would write.
        requested_pages: u64,
        /// Pages the live VMs hold of the reserve: for each, what it declared it would
        /// write or what it broke, whichever is more.
        held_pages: u64,
        /// Pages copied on write so far.
        broken_pages: u64,
        /// The reserve.
        reserve_pages: u64,
    },
    /// No VM with this id.
    #[error("no VM {0} on this host")]
    UnknownVm(u64),
    /// A VM process failed or broke the control protocol.
    #[error("VM {vm}: {reason}")]
    VmProcess {
        /// The VM.
        vm: u64,
        /// What happened.
        reason: String,
    },
    /// The image loader pipeline could not run or did not finish (the load was undone).
    #[error("image loader pipeline failed: {0}; nothing was loaded, start the VM again (and report this if it repeats)")]
    Loader(String),
    /// The content store or state directory failed.
    #[error("content store I/O at {path}: {source}")]
    Store {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn owner_hint(owner: Option<u32>) -> String {
    match owner {
        Some(pid) => format!(
            ", owned by the running host process {pid}: stop that process, or use another group name"
        ),
        None => " in this host: stop its VMs and use it, or use another group name".into(),
    }
}
