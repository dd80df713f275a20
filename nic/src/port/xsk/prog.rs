//! The XDP program, as raw eBPF instructions: every frame on the bound queue goes to
//! the AF_XDP socket registered for that queue in an XSKMAP, and frames of queues
//! without a socket go on to the kernel stack.
//!
//! ```text
//! r2 = *(u32 *)(r1 + 16)        ; ctx->rx_queue_index
//! r1 = map_fd(xsks) ll          ; ld_imm64, src = BPF_PSEUDO_MAP_FD
//! r3 = XDP_PASS                 ; action when the map has no socket at that index
//! call bpf_redirect_map         ; r0 = XDP_REDIRECT or XDP_PASS
//! exit
//! ```

/// One eBPF instruction (`struct bpf_insn`): opcode, destination register in the low
/// nibble and source register in the high nibble of `regs`, offset, immediate.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

// Opcode parts (linux/bpf_common.h, linux/bpf.h).
const BPF_LD: u8 = 0x00;
const BPF_LDX: u8 = 0x01;
const BPF_JMP: u8 = 0x05;
const BPF_ALU64: u8 = 0x07;
const BPF_W: u8 = 0x00;
const BPF_DW: u8 = 0x18;
const BPF_IMM: u8 = 0x00;
const BPF_MEM: u8 = 0x60;
const BPF_MOV: u8 = 0xb0;
const BPF_K: u8 = 0x00;
const BPF_CALL: u8 = 0x80;
const BPF_EXIT: u8 = 0x90;
/// `src_reg` of an `ld_imm64` whose immediate is a map fd the kernel resolves.
const BPF_PSEUDO_MAP_FD: u8 = 1;
/// Helper number of `bpf_redirect_map`.
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
/// `offsetof(struct xdp_md, rx_queue_index)`.
const XDP_MD_RX_QUEUE_INDEX: i16 = 16;
/// `XDP_PASS`.
const XDP_PASS: i32 = 2;

impl Insn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        // `dst_reg:4, src_reg:4` bitfields: dst is the low nibble on little-endian
        // hosts and the high nibble on big-endian ones.
        #[cfg(target_endian = "little")]
        let regs = (src << 4) | (dst & 0x0f);
        #[cfg(target_endian = "big")]
        let regs = (dst << 4) | (src & 0x0f);
        Self {
            code,
            regs,
            off,
            imm,
        }
    }

    /// `dst = *(u32 *)(src + off)`.
    const fn load_u32(dst: u8, src: u8, off: i16) -> Self {
        Self::new(BPF_LDX | BPF_MEM | BPF_W, dst, src, off, 0)
    }

    /// `dst = imm` (64-bit move of a sign-extended 32-bit immediate).
    const fn mov64_imm(dst: u8, imm: i32) -> Self {
        Self::new(BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm)
    }

    /// `dst = map` (two instruction slots: the kernel swaps the fd for the map).
    const fn ld_map_fd(dst: u8, fd: i32) -> [Self; 2] {
        [
            Self::new(BPF_LD | BPF_DW | BPF_IMM, dst, BPF_PSEUDO_MAP_FD, 0, fd),
            Self::new(0, 0, 0, 0, 0),
        ]
    }

    /// `call helper`.
    const fn call(helper: i32) -> Self {
        Self::new(BPF_JMP | BPF_CALL, 0, 0, 0, helper)
    }

    /// `exit` (returns `r0`).
    const fn exit() -> Self {
        Self::new(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)
    }

    /// The instruction as the kernel reads it (little-endian host layout).
    #[cfg(test)]
    fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = self.regs;
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }
}

/// The redirect program for the XSKMAP whose fd is `xskmap_fd`.
pub(super) fn redirect_program(xskmap_fd: i32) -> Vec<Insn> {
    let [ld_lo, ld_hi] = Insn::ld_map_fd(1, xskmap_fd);
    vec![
        Insn::load_u32(2, 1, XDP_MD_RX_QUEUE_INDEX),
        ld_lo,
        ld_hi,
        Insn::mov64_imm(3, XDP_PASS),
        Insn::call(BPF_FUNC_REDIRECT_MAP),
        Insn::exit(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insn_is_eight_bytes() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn encodings_match_the_kernel_layout() {
        // Reference bytes as llvm-objdump prints them for the same C program.
        let p = redirect_program(7);
        let bytes: Vec<[u8; 8]> = p.iter().map(|i| i.to_bytes()).collect();
        assert_eq!(bytes[0], [0x61, 0x12, 0x10, 0x00, 0, 0, 0, 0]); // r2 = *(u32 *)(r1 + 16)
        assert_eq!(bytes[1], [0x18, 0x11, 0, 0, 7, 0, 0, 0]); // r1 = map fd 7 ll
        assert_eq!(bytes[2], [0; 8]);
        assert_eq!(bytes[3], [0xb7, 0x03, 0, 0, 2, 0, 0, 0]); // r3 = 2
        assert_eq!(bytes[4], [0x85, 0, 0, 0, 51, 0, 0, 0]); // call 51
        assert_eq!(bytes[5], [0x95, 0, 0, 0, 0, 0, 0, 0]); // exit
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn registers_pack_dst_low_src_high() {
        assert_eq!(
            Insn::new(0, 0xa, 0x3, -1, -2).to_bytes(),
            [0, 0x3a, 0xff, 0xff, 0xfe, 0xff, 0xff, 0xff]
        );
    }
}
