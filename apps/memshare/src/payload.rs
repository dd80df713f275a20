//! The guest: 64-bit long-mode code assembled at run time with `iced-x86`, and the
//! host-side model of what it computes (so the host can check every answer).
//!
//! Guest physical layout (flat segments; the VMM identity-maps the low 4 GiB with 2 MiB
//! pages, so guest-virtual = guest-physical):
//!
//! | address            | what                                                   |
//! |--------------------|--------------------------------------------------------|
//! | `0x1000`           | parameter block (`u32` fields, see [`Params`])          |
//! | `0x9000..0xf000`   | page tables (PML4, PDPT, four page directories)        |
//! | `0x10000`          | code                                                   |
//! | `0x80000`          | top of stack                                           |
//! | `0x100000`         | results: one `u32` checksum per image page              |
//! | `0x2000_0000`      | block device window ([`DEV_PAGES`] pages)               |
//! | `0x4000_0000`      | the image, page `i` at `IMAGE_GPA + i * 4096`           |
//!
//! Protocol over port I/O: the guest reads a command from [`PORT_CMD`] (the host blocks
//! that read until it has one), runs it, and writes a count to [`PORT_DONE`]. Commands:
//! [`CMD_CHECKSUM`] (FNV-1a over each page's 32-bit words into the results array),
//! [`CMD_WRITE`] (write a marker into the first word of each selected page) and
//! [`CMD_HALT`], and `CMD_DEVREAD` (read image blocks through the paravirtual block
//! device: for each, write the block number and the window page to the device ports, read
//! its status, checksum the window page). Any other port is a bad port write.

use iced_x86::code_asm::*;

/// Guest-physical address of the parameter block.
pub(crate) const PARAMS_GPA: u64 = 0x1000;
/// Guest-physical address of the code.
pub(crate) const CODE_GPA: u64 = 0x10000;
/// Guest-physical address of the top-level page table (PML4).
pub(crate) const PML4_GPA: u64 = 0x9000;
/// Initial stack pointer.
pub(crate) const STACK_TOP: u64 = 0x80000;
/// Guest-physical address of the results array.
pub(crate) const RESULTS_GPA: u64 = 0x10_0000;
/// Guest-physical address where the image starts.
pub(crate) const IMAGE_GPA: u64 = 0x4000_0000;
/// Port the guest reads its next command from.
pub(crate) const PORT_CMD: u16 = 0x500;
/// Port the guest writes a finished command's count to.
pub(crate) const PORT_DONE: u16 = 0x501;
/// Command: checksum every image page into the results array.
pub(crate) const CMD_CHECKSUM: u32 = 1;
/// Command: write a marker into the selected pages.
pub(crate) const CMD_WRITE: u32 = 2;
/// Command: halt the vCPU.
pub(crate) const CMD_HALT: u32 = 3;
/// Command: read blocks through the paravirtual block device into the device window and
/// checksum them (first block at parameter offset 28, count at 32).
pub(crate) const CMD_DEVREAD: u32 = 4;
/// Device port: the image block of the next read.
pub(crate) const PORT_BLK_BLOCK: u16 = 0x510;
/// Device port: the window page to read into (starts the read).
pub(crate) const PORT_BLK_PAGE: u16 = 0x511;
/// Device port: status of the last read (0 = done).
pub(crate) const PORT_BLK_STATUS: u16 = 0x512;
/// Guest-physical address of the block device's window.
pub(crate) const DEV_GPA: u64 = 0x2000_0000;
/// Pages in the device window.
pub const DEV_PAGES: u32 = 256;
/// What the guest reports when a device read failed.
pub(crate) const DEV_FAILED: u32 = 0xffff_fffe;
/// Magic value at the start of the parameter block.
pub(crate) const PARAMS_MAGIC: u32 = 0x5357_4d50;

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;
const GOLDEN: u32 = 0x9e37_79b1;

/// The parameter block the VMM writes at [`PARAMS_GPA`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Pages in the image.
    pub image_pages: u32,
    /// Pages whose selection hash (24 bits) is below this are written by [`CMD_WRITE`].
    pub write_threshold: u32,
    /// Seed of the page selection hash.
    pub select_seed: u32,
    /// Seed of the marker value written.
    pub marker_seed: u32,
}

impl Params {
    /// The block's bytes.
    pub fn to_bytes(self) -> [u8; 40] {
        let words = [
            PARAMS_MAGIC,
            IMAGE_GPA as u32,
            self.image_pages,
            RESULTS_GPA as u32,
            self.write_threshold,
            self.select_seed,
            self.marker_seed,
            0,
            0,
            0,
        ];
        let mut out = [0u8; 40];
        for (o, w) in out.chunks_exact_mut(4).zip(words) {
            o.copy_from_slice(&w.to_le_bytes());
        }
        out
    }
}

/// The threshold that selects about `fraction` (0..=1) of the pages.
pub fn write_threshold(fraction: f64) -> u32 {
    (fraction.clamp(0.0, 1.0) * f64::from(1u32 << 24)).round() as u32
}

/// Whether the guest's [`CMD_WRITE`] writes page `i` (the same arithmetic as the guest).
pub fn selected(i: u32, select_seed: u32, threshold: u32) -> bool {
    ((i ^ select_seed).wrapping_mul(GOLDEN) >> 8) < threshold
}

/// The word the guest writes at the start of selected page `i`.
pub fn marker(i: u32, marker_seed: u32) -> u32 {
    i ^ marker_seed
}

/// The guest's checksum of one page: FNV-1a over its little-endian 32-bit words.
pub fn page_checksum(page: &[u8]) -> u32 {
    page.chunks_exact(4).fold(FNV_OFFSET, |h, w| {
        (h ^ u32::from_le_bytes(w.try_into().expect("4 bytes"))).wrapping_mul(FNV_PRIME)
    })
}

/// Which guest program a VM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Program {
    /// The real guest: checksums, writes, halts on command.
    Checksummer,
    /// Misbehaves: loops forever without an exit.
    Spin,
    /// Misbehaves: executes `ud2` with no interrupt table (a triple fault).
    TripleFault,
    /// Misbehaves: writes to a port no device owns.
    BadPort,
    /// Misbehaves: reads guest-physical memory that is not mapped (an MMIO exit).
    WildRead,
}

impl Program {
    /// Assemble the program for [`CODE_GPA`].
    pub fn assemble(self) -> Vec<u8> {
        let r = match self {
            Program::Checksummer => checksummer(),
            Program::Spin => simple(|a| {
                let mut l = a.create_label();
                a.set_label(&mut l)?;
                a.jmp(l)
            }),
            Program::TripleFault => simple(|a| a.ud2()),
            Program::BadPort => simple(|a| {
                a.mov(eax, 0x1234_5678u32)?;
                a.mov(dx, 0x1234u32)?;
                a.out(dx, eax)?;
                a.hlt()
            }),
            Program::WildRead => simple(|a| {
                a.mov(esi, 0xf000_0000u32)?;
                a.mov(eax, dword_ptr(rsi))?;
                a.hlt()
            }),
        };
        r.expect("the built-in guest programs assemble")
    }
}

fn simple(
    body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    body(&mut a)?;
    a.assemble(CODE_GPA)
}

fn checksummer() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut top = a.create_label();
    let mut do_checksum = a.create_label();
    let mut do_write = a.create_label();
    let mut do_halt = a.create_label();
    let mut page_loop = a.create_label();
    let mut word_loop = a.create_label();
    let mut cs_done = a.create_label();
    let mut w_loop = a.create_label();
    let mut w_skip = a.create_label();
    let mut w_done = a.create_label();
    let mut do_devread = a.create_label();
    let mut d_loop = a.create_label();
    let mut d_word = a.create_label();
    let mut d_fail = a.create_label();
    let mut d_done = a.create_label();

    // r8 = parameter block.
    a.mov(esp, STACK_TOP as u32)?;
    a.mov(r8d, PARAMS_GPA as u32)?;
    // top: eax = in(PORT_CMD); dispatch.
    a.set_label(&mut top)?;
    a.mov(dx, u32::from(PORT_CMD))?;
    a.in_(eax, dx)?;
    a.cmp(eax, CMD_CHECKSUM)?;
    a.je(do_checksum)?;
    a.cmp(eax, CMD_WRITE)?;
    a.je(do_write)?;
    a.cmp(eax, CMD_HALT)?;
    a.je(do_halt)?;
    a.cmp(eax, CMD_DEVREAD)?;
    a.je(do_devread)?;
    // Unknown command: report 0xffffffff as done.
    a.mov(eax, 0xffff_ffffu32)?;
    a.mov(dx, u32::from(PORT_DONE))?;
    a.out(dx, eax)?;
    a.jmp(top)?;

    // checksum: rsi = page pointer, ecx = pages left, rdi = result pointer.
    a.set_label(&mut do_checksum)?;
    a.mov(esi, dword_ptr(r8 + 4))?;
    a.mov(ecx, dword_ptr(r8 + 8))?;
    a.mov(edi, dword_ptr(r8 + 12))?;
    a.set_label(&mut page_loop)?;
    a.test(ecx, ecx)?;
    a.jz(cs_done)?;
    a.mov(eax, FNV_OFFSET)?;
    a.mov(ebp, 1024u32)?;
    a.set_label(&mut word_loop)?;
    a.xor(eax, dword_ptr(rsi))?;
    a.imul_3(eax, eax, FNV_PRIME as i32)?;
    a.add(rsi, 4)?;
    a.dec(ebp)?;
    a.jnz(word_loop)?;
    a.mov(dword_ptr(rdi), eax)?;
    a.add(rdi, 4)?;
    a.dec(ecx)?;
    a.jmp(page_loop)?;
    a.set_label(&mut cs_done)?;
    a.mov(eax, dword_ptr(r8 + 8))?;
    a.mov(dx, u32::from(PORT_DONE))?;
    a.out(dx, eax)?;
    a.jmp(top)?;

    // write: ecx = page index, rsi = page pointer, ebx = pages written.
    a.set_label(&mut do_write)?;
    a.xor(ecx, ecx)?;
    a.xor(ebx, ebx)?;
    a.mov(esi, dword_ptr(r8 + 4))?;
    a.set_label(&mut w_loop)?;
    a.cmp(ecx, dword_ptr(r8 + 8))?;
    a.jae(w_done)?;
    a.mov(eax, ecx)?;
    a.xor(eax, dword_ptr(r8 + 20))?;
    a.imul_3(eax, eax, GOLDEN as i32)?;
    a.shr(eax, 8)?;
    a.cmp(eax, dword_ptr(r8 + 16))?;
    a.jae(w_skip)?;
    a.mov(eax, ecx)?;
    a.xor(eax, dword_ptr(r8 + 24))?;
    a.mov(dword_ptr(rsi), eax)?;
    a.inc(ebx)?;
    a.set_label(&mut w_skip)?;
    a.add(rsi, 4096)?;
    a.inc(ecx)?;
    a.jmp(w_loop)?;
    a.set_label(&mut w_done)?;
    a.mov(eax, ebx)?;
    a.mov(dx, u32::from(PORT_DONE))?;
    a.out(dx, eax)?;
    a.jmp(top)?;

    // devread: ecx = k, rdi = result pointer, r9 = window page pointer.
    a.set_label(&mut do_devread)?;
    a.xor(ecx, ecx)?;
    a.mov(edi, dword_ptr(r8 + 12))?;
    a.mov(r9d, DEV_GPA as u32)?;
    a.set_label(&mut d_loop)?;
    a.cmp(ecx, dword_ptr(r8 + 32))?;
    a.jae(d_done)?;
    a.mov(eax, dword_ptr(r8 + 28))?;
    a.add(eax, ecx)?;
    a.mov(dx, u32::from(PORT_BLK_BLOCK))?;
    a.out(dx, eax)?;
    a.mov(eax, ecx)?;
    a.mov(dx, u32::from(PORT_BLK_PAGE))?;
    a.out(dx, eax)?;
    a.mov(dx, u32::from(PORT_BLK_STATUS))?;
    a.in_(eax, dx)?;
    a.test(eax, eax)?;
    a.jnz(d_fail)?;
    a.mov(rsi, r9)?;
    a.mov(eax, FNV_OFFSET)?;
    a.mov(ebp, 1024u32)?;
    a.set_label(&mut d_word)?;
    a.xor(eax, dword_ptr(rsi))?;
    a.imul_3(eax, eax, FNV_PRIME as i32)?;
    a.add(rsi, 4)?;
    a.dec(ebp)?;
    a.jnz(d_word)?;
    a.mov(dword_ptr(rdi), eax)?;
    a.add(rdi, 4)?;
    a.add(r9, 4096)?;
    a.inc(ecx)?;
    a.jmp(d_loop)?;
    a.set_label(&mut d_fail)?;
    a.mov(eax, DEV_FAILED)?;
    a.mov(dx, u32::from(PORT_DONE))?;
    a.out(dx, eax)?;
    a.jmp(top)?;
    a.set_label(&mut d_done)?;
    a.mov(eax, ecx)?;
    a.mov(dx, u32::from(PORT_DONE))?;
    a.out(dx, eax)?;
    a.jmp(top)?;

    a.set_label(&mut do_halt)?;
    a.hlt()?;
    a.jmp(do_halt)?;
    a.assemble(CODE_GPA)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_program_assembles() {
        for p in [
            Program::Checksummer,
            Program::Spin,
            Program::TripleFault,
            Program::BadPort,
            Program::WildRead,
        ] {
            assert!(!p.assemble().is_empty());
        }
    }

    proptest! {
        #[test]
        fn selection_fraction_is_close(seed in any::<u32>(), f in 0.0f64..=1.0) {
            let t = write_threshold(f);
            let n = 20_000u32;
            let hit = (0..n).filter(|&i| selected(i, seed, t)).count() as f64 / f64::from(n);
            prop_assert!((hit - f).abs() < 0.03, "fraction {f} selected {hit}");
        }

        #[test]
        fn fraction_one_selects_all_and_zero_none(seed in any::<u32>(), i in any::<u32>()) {
            prop_assert!(selected(i, seed, write_threshold(1.0)));
            prop_assert!(!selected(i, seed, write_threshold(0.0)));
        }
    }
}
