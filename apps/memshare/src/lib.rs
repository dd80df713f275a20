//! pipewright-memshare (crate docs to come).

mod error;
mod host;
mod image;
mod images;
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
pub use payload::{marker, page_checksum, selected, write_threshold, Params, Program};
pub use policy::{admit, Admission, Sharing};
pub use store::{ContentIndex, ContentStore, LoadMap, LoadStats, Placed, ZERO_SLOT};
pub use sys::{
    anonymous_in_range, frames, parse_smaps, proc_memory, GuestMemory, ProcMemory, PAGE,
};
pub use vmm::{Vm, VmConfig};
pub use vmproc::{vm_main, Reply, VmSpec};
