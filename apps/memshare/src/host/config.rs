//! What the host, a trust group and a VM are started with.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::loader::LoaderConfig;
use crate::payload::Program;
use crate::vmproc::Loading;

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
