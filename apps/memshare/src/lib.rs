//! pipewright-memshare (crate docs to come).

mod error;
mod payload;
mod sys;
mod vmm;

pub use error::{Error, GuestError, ImageError};
pub use payload::{marker, page_checksum, selected, write_threshold, Params, Program};
pub use sys::{anonymous_in_range, frames, parse_smaps, proc_memory, GuestMemory, ProcMemory, PAGE};
pub use vmm::{Vm, VmConfig};
