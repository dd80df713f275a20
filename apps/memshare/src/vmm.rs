//! A small VMM on `kvm-ioctls`: one VM, its guest memory regions, one vCPU in 64-bit
//! long mode (identity-mapped low 4 GiB), and the port-I/O protocol of [`crate::payload`]. The vCPU runs on
//! its own thread; a command that overruns its deadline is interrupted with a signal.
#![allow(unsafe_code)]

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::error::GuestError;
use crate::payload::{
    self, Params, Program, DEV_PAGES, PORT_BLK_BLOCK, PORT_BLK_PAGE, PORT_BLK_STATUS, PORT_CMD,
    PORT_DONE,
};
use crate::store::{LoadMap, ZERO_SLOT};
use crate::sys::{GuestMemory, PAGE};

/// Size of the low region (parameters, code, stack) before the results array.
const LOW_BYTES: usize = payload::RESULTS_GPA as usize;

/// What the guest should run and with how much memory.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The guest program.
    pub program: Program,
    /// The parameter block (image size, write selection).
    pub params: Params,
    /// Guest RAM in bytes beyond the low region and results: the image plus free RAM.
    pub ram_bytes: u64,
}

/// The paravirtual block device: the guest reads image blocks into its device window
/// and the VMM serves each read by **mapping** the block's page from the content store
/// over the window page (`MAP_PRIVATE`), not by copying it, so a block read at run time
/// shares the same physical page as every other reader of that content in the group.
#[derive(Debug)]
pub struct BlockDevice {
    store: File,
    map: LoadMap,
}

impl BlockDevice {
    /// A device over the image whose blocks `map` places in `store`.
    pub fn new(store: File, map: LoadMap) -> Self {
        Self { store, map }
    }

    /// Serve one read: map `block` at window page `page`. Returns the status the guest
    /// sees (0 done, 1 no such block, 2 no such window page, 3 mapping failed).
    fn serve(&self, window: &mut GuestMemory, block: u32, page: u32) -> u32 {
        if page >= DEV_PAGES {
            return 2;
        }
        let Some(&slot) = self.map.slots.get(block as usize) else {
            return 1;
        };
        let r = if slot == ZERO_SLOT {
            window.overlay_anonymous(page as usize, 1)
        } else {
            window.overlay_private(page as usize, 1, &self.store, u64::from(slot))
        };
        if r.is_ok() {
            0
        } else {
            3
        }
    }
}

/// How a vCPU thread ended.
#[derive(Debug)]
enum Event {
    Done(u32),
    Stopped(Result<(), GuestError>),
}

/// One running virtual machine (KVM VM + one vCPU thread).
#[derive(Debug)]
pub struct Vm {
    _kvm: Kvm,
    _vm: VmFd,
    window: Option<GuestMemory>,
    window_range: Option<(u64, u64)>,
    device_reads: Arc<AtomicU64>,
    low: GuestMemory,
    image: GuestMemory,
    _ram: Option<GuestMemory>,
    image_pages: u32,
    cmd_tx: Option<Sender<u32>>,
    ev_rx: Receiver<Event>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Option<GuestMemory>>>,
    dead: Option<GuestError>,
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn kick_signal() -> libc::c_int {
    SIGRTMIN() + 1
}

impl Vm {
    /// Create the VM with `image` (a mapping of `params.image_pages` pages, prepared by
    /// the loader) as guest memory at [`payload::IMAGE_GPA`], load the program and start
    /// the vCPU (which waits for the first command).
    pub fn start(config: &VmConfig, image: GuestMemory) -> Result<Self, GuestError> {
        Self::start_with_device(config, image, None)
    }

    /// [`Vm::start`] with a paravirtual block device over the image (its window at
    /// guest-physical `0x2000_0000`, `DEV_PAGES` pages).
    pub fn start_with_device(
        config: &VmConfig,
        image: GuestMemory,
        device: Option<BlockDevice>,
    ) -> Result<Self, GuestError> {
        static HANDLER: OnceLock<Result<(), String>> = OnceLock::new();
        HANDLER
            .get_or_init(|| {
                register_signal_handler(kick_signal(), on_kick).map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|e| GuestError::Setup(format!("vCPU kick signal handler: {e}")))?;
        let image_bytes = u64::from(config.params.image_pages) * PAGE as u64;
        if image_bytes > config.ram_bytes {
            return Err(GuestError::ImageTooLarge {
                image_bytes,
                ram_bytes: config.ram_bytes,
            });
        }
        if image.len() as u64 != image_bytes.max(PAGE as u64) {
            return Err(GuestError::Setup(format!(
                "image mapping has {} bytes, parameters say {image_bytes}",
                image.len()
            )));
        }
        if payload::IMAGE_GPA
            .checked_add(config.ram_bytes)
            .is_none_or(|end| end > 1 << 32)
        {
            return Err(GuestError::ImageTooLarge {
                image_bytes: config.ram_bytes,
                ram_bytes: (1 << 32) - payload::IMAGE_GPA,
            });
        }
        let setup = |what: &str, e: kvm_ioctls::Error| GuestError::Setup(format!("{what}: {e}"));
        let kvm = Kvm::new().map_err(|e| setup("open /dev/kvm", e))?;
        let results_bytes = (config.params.image_pages as usize * 4).div_ceil(PAGE) * PAGE;
        let mut low = GuestMemory::anonymous(LOW_BYTES + results_bytes.max(PAGE))
            .map_err(|e| GuestError::Setup(format!("low memory: {e}")))?;
        let rest = config.ram_bytes - image_bytes;
        let ram = if rest > 0 {
            Some(
                GuestMemory::anonymous(rest as usize)
                    .map_err(|e| GuestError::Setup(format!("free RAM: {e}")))?,
            )
        } else {
            None
        };
        let window = match device {
            Some(_) => Some(
                GuestMemory::anonymous(DEV_PAGES as usize * PAGE)
                    .map_err(|e| GuestError::Setup(format!("device window: {e}")))?,
            ),
            None => None,
        };
        // Created after the memory it maps, so that on every early return it is closed
        // (locals drop in reverse order) before that memory is unmapped; `image`, a
        // parameter, drops after every local.
        let vm = kvm.create_vm().map_err(|e| setup("create VM", e))?;
        let mut regions = vec![(0u64, &low), (payload::IMAGE_GPA, &image)];
        if let Some(r) = &ram {
            regions.push((payload::IMAGE_GPA + image.len() as u64, r));
        }
        if let Some(w) = &window {
            regions.push((payload::DEV_GPA, w));
        }
        for (slot, (gpa, m)) in regions.into_iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: gpa,
                memory_size: m.len() as u64,
                userspace_addr: m.addr(),
            };
            // SAFETY: the region describes a live mapping that outlives the VM fd: on an
            // early return `vm` drops first (declared after the mappings), and the
            // finished `Vm` closes `_vm` before its `low`, `image` and `_ram` (field
            // order); slots and guest ranges do not overlap.
            unsafe { vm.set_user_memory_region(region) }.map_err(|e| setup("memory region", e))?;
        }
        low.write(payload::PARAMS_GPA as usize, &config.params.to_bytes())
            .map_err(|e| GuestError::Setup(format!("parameters: {e}")))?;
        low.write(payload::PML4_GPA as usize, &page_tables())
            .map_err(|e| GuestError::Setup(format!("page tables: {e}")))?;
        low.write(payload::CODE_GPA as usize, &config.program.assemble())
            .map_err(|e| GuestError::Setup(format!("program: {e}")))?;
        let vcpu = vm.create_vcpu(0).map_err(|e| setup("create vCPU", e))?;
        long_mode(&vcpu).map_err(|e| setup("vCPU registers", e))?;

        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (ev_tx, ev_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let device_reads = Arc::new(AtomicU64::new(0));
        let reads = device_reads.clone();
        let window_range = window.as_ref().map(|w| (w.addr(), w.len() as u64));
        let mut dev = device.zip(window);
        let thread = std::thread::Builder::new()
            .name("vcpu0".into())
            .spawn(move || {
                let end = run_vcpu(vcpu, &cmd_rx, &ev_tx, &stop2, dev.as_mut(), &reads);
                let _ = ev_tx.send(Event::Stopped(end));
                // The window goes back to the `Vm`, which keeps it until the VM is closed.
                dev.map(|(_, w)| w)
            })
            .map_err(|e| GuestError::Setup(format!("vCPU thread: {e}")))?;
        Ok(Self {
            _kvm: kvm,
            _vm: vm,
            window: None,
            window_range,
            device_reads,
            low,
            image,
            _ram: ram,
            image_pages: config.params.image_pages,
            cmd_tx: Some(cmd_tx),
            ev_rx,
            stop,
            thread: Some(thread),
            dead: None,
        })
    }

    /// Run one guest command; the guest must finish it within `deadline`. Returns the
    /// count the guest reported. After an error the VM is stopped for good.
    pub fn command(&mut self, cmd: u32, deadline: Duration) -> Result<u32, GuestError> {
        if let Some(e) = &self.dead {
            return Err(e.clone());
        }
        let sent = self.cmd_tx.as_ref().is_some_and(|tx| tx.send(cmd).is_ok());
        let r = match self.ev_rx.recv_timeout(deadline) {
            Ok(Event::Done(v)) => Ok(v),
            Ok(Event::Stopped(Ok(()))) => Err(GuestError::Halted),
            Ok(Event::Stopped(Err(e))) => Err(e),
            Err(RecvTimeoutError::Disconnected) => Err(GuestError::Halted),
            Err(RecvTimeoutError::Timeout) if sent => {
                self.interrupt();
                Err(GuestError::Deadline {
                    ms: deadline.as_millis() as u64,
                })
            }
            Err(RecvTimeoutError::Timeout) => Err(GuestError::Halted),
        };
        if let Err(e) = &r {
            self.dead = Some(e.clone());
            self.interrupt();
        }
        r
    }

    /// Checksum every image page in the guest; returns the guest's checksums.
    pub fn checksum(&mut self, deadline: Duration) -> Result<Vec<u32>, GuestError> {
        let n = self.command(payload::CMD_CHECKSUM, deadline)?;
        if n != self.image_pages {
            return Err(GuestError::Protocol(format!(
                "guest checksummed {n} pages of {}",
                self.image_pages
            )));
        }
        let mut raw = vec![0u8; n as usize * 4];
        self.low
            .read(payload::RESULTS_GPA as usize, &mut raw)
            .map_err(|e| GuestError::Protocol(e.to_string()))?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }

    /// Have the guest write its markers; returns how many pages it wrote.
    pub fn write(&mut self, deadline: Duration) -> Result<u32, GuestError> {
        self.command(payload::CMD_WRITE, deadline)
    }

    /// Have the guest read `count` image blocks from `first` through the block device
    /// (into window pages 0..count) and return its checksum of each.
    pub fn device_read(
        &mut self,
        first: u32,
        count: u32,
        deadline: Duration,
    ) -> Result<Vec<u32>, GuestError> {
        if count > DEV_PAGES.min(self.image_pages) {
            return Err(GuestError::Protocol(format!(
                "device reads of {count} blocks exceed the window or the results ({})",
                DEV_PAGES.min(self.image_pages)
            )));
        }
        let mut p = [0u8; 8];
        p[..4].copy_from_slice(&first.to_le_bytes());
        p[4..].copy_from_slice(&count.to_le_bytes());
        self.low
            .write(payload::PARAMS_GPA as usize + 28, &p)
            .map_err(|e| GuestError::Protocol(e.to_string()))?;
        let n = self.command(payload::CMD_DEVREAD, deadline)?;
        if n == payload::DEV_FAILED {
            return Err(GuestError::Protocol(format!(
                "device read of blocks {first}..{} failed (no such block?)",
                u64::from(first) + u64::from(count)
            )));
        }
        if n != count {
            return Err(GuestError::Protocol(format!(
                "guest read {n} of {count} blocks"
            )));
        }
        let mut raw = vec![0u8; n as usize * 4];
        self.low
            .read(payload::RESULTS_GPA as usize, &mut raw)
            .map_err(|e| GuestError::Protocol(e.to_string()))?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }

    /// Where the block device's window lives in this process: `(address, length)`.
    pub fn device_window(&self) -> Option<(u64, u64)> {
        self.window_range
    }

    /// Block reads the device served (each by mapping a stored page).
    pub fn device_reads(&self) -> u64 {
        self.device_reads.load(Ordering::Relaxed)
    }

    /// The host mapping of the image (for inspection: address, length).
    pub fn image_range(&self) -> (u64, u64) {
        (self.image.addr(), self.image.len() as u64)
    }

    /// Copy bytes of guest image memory out (host view).
    pub fn read_image(&self, offset: usize, out: &mut [u8]) -> std::io::Result<()> {
        self.image.read(offset, out)
    }

    /// Stop the vCPU thread (it may be inside the guest) and wait for it.
    fn interrupt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cmd_tx = None;
        if let Some(t) = self.thread.take() {
            while !t.is_finished() {
                let _ = t.kill(kick_signal());
                std::thread::sleep(Duration::from_millis(5));
            }
            if let Ok(w) = t.join() {
                self.window = w;
            }
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.interrupt();
    }
}

fn run_vcpu(
    mut vcpu: VcpuFd,
    cmd_rx: &Receiver<u32>,
    ev_tx: &Sender<Event>,
    stop: &AtomicBool,
    mut dev: Option<&mut (BlockDevice, GuestMemory)>,
    reads: &AtomicU64,
) -> Result<(), GuestError> {
    let (mut block, mut status) = (0u32, 0u32);
    let word = |data: &[u8]| {
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        u32::from_le_bytes(b)
    };
    loop {
        if stop.load(Ordering::SeqCst) {
            return Err(GuestError::Interrupted);
        }
        match vcpu.run() {
            Ok(VcpuExit::IoIn(PORT_CMD, data)) => {
                let Ok(cmd) = cmd_rx.recv() else {
                    return Err(GuestError::Interrupted);
                };
                let bytes = cmd.to_le_bytes();
                let n = data.len().min(4);
                data[..n].copy_from_slice(&bytes[..n]);
            }
            Ok(VcpuExit::IoOut(PORT_DONE, data)) => {
                let mut b = [0u8; 4];
                let n = data.len().min(4);
                b[..n].copy_from_slice(&data[..n]);
                if ev_tx.send(Event::Done(u32::from_le_bytes(b))).is_err() {
                    return Err(GuestError::Interrupted);
                }
            }
            Ok(VcpuExit::IoOut(PORT_BLK_BLOCK, data)) if dev.is_some() => block = word(data),
            Ok(VcpuExit::IoOut(PORT_BLK_PAGE, data)) if dev.is_some() => {
                if let Some((d, window)) = dev.as_deref_mut() {
                    status = d.serve(window, block, word(data));
                    if status == 0 {
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok(VcpuExit::IoIn(PORT_BLK_STATUS, data)) if dev.is_some() => {
                let b = status.to_le_bytes();
                let n = data.len().min(4);
                data[..n].copy_from_slice(&b[..n]);
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                return Err(GuestError::BadPort {
                    port,
                    write: true,
                    len: data.len(),
                })
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                return Err(GuestError::BadPort {
                    port,
                    write: false,
                    len: data.len(),
                })
            }
            Ok(VcpuExit::MmioRead(gpa, _)) | Ok(VcpuExit::MmioWrite(gpa, _)) => {
                return Err(GuestError::BadMemoryAccess { gpa })
            }
            Ok(VcpuExit::Shutdown) => return Err(GuestError::TripleFault),
            Ok(VcpuExit::Hlt) => return Ok(()),
            Ok(other) => return Err(GuestError::UnexpectedExit(format!("{other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => return Err(GuestError::UnexpectedExit(format!("KVM_RUN: {e}"))),
        }
    }
}

fn flat(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: selector | 3,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 3,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// PML4, PDPT and four page directories identity-mapping 0..4 GiB with 2 MiB pages,
/// laid out from [`payload::PML4_GPA`].
fn page_tables() -> Vec<u8> {
    const P_RW: u64 = 0x7; // present, writable, user
    const PS: u64 = 0x80;
    let pml4 = payload::PML4_GPA;
    let pdpt = pml4 + 0x1000;
    let pd = pdpt + 0x1000;
    let mut t = vec![0u64; 6 * 512];
    t[0] = pdpt | P_RW;
    for g in 0..4u64 {
        t[512 + g as usize] = (pd + g * 0x1000) | P_RW;
        for j in 0..512u64 {
            t[1024 + (g * 512 + j) as usize] = (g << 30) | (j << 21) | P_RW | PS;
        }
    }
    t.iter().flat_map(|e| e.to_le_bytes()).collect()
}

/// 64-bit long mode with paging through [`page_tables`], no interrupt table: any
/// exception becomes a triple fault (a `Shutdown` exit).
fn long_mode(vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    let mut s = vcpu.get_sregs()?;
    s.cs = flat(0x18, true);
    for seg in [&mut s.ds, &mut s.es, &mut s.fs, &mut s.gs, &mut s.ss] {
        *seg = flat(0x20, false);
    }
    s.idt.base = 0;
    s.idt.limit = 0;
    s.cr3 = payload::PML4_GPA;
    s.cr4 = 0x20; // PAE
    s.cr0 = 0x8000_0011; // PG | ET | PE
    s.efer = 0x500; // LMA | LME
    vcpu.set_sregs(&s)?;
    let mut r = vcpu.get_regs()?;
    r.rip = payload::CODE_GPA;
    r.rsp = payload::STACK_TOP;
    r.rflags = 0x3002; // IOPL 3: the guest's port I/O exits to the VMM
    vcpu.set_regs(&r)
}
