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
const BPF_H: u8 = 0x08;
const BPF_B: u8 = 0x10;
const BPF_ADD: u8 = 0x00;
const BPF_AND: u8 = 0x50;
const BPF_JEQ: u8 = 0x10;
const BPF_JGT: u8 = 0x20;
const BPF_JNE: u8 = 0x50;
const BPF_X: u8 = 0x08;
/// `offsetof(struct xdp_md, data)` and `data_end`.
const XDP_MD_DATA: i16 = 0;
const XDP_MD_DATA_END: i16 = 4;
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

    /// `dst = *(u16 *)(src + off)` (network-order bytes read as a host integer).
    const fn load_u16(dst: u8, src: u8, off: i16) -> Self {
        Self::new(BPF_LDX | BPF_MEM | BPF_H, dst, src, off, 0)
    }

    /// `dst = *(u8 *)(src + off)`.
    const fn load_u8(dst: u8, src: u8, off: i16) -> Self {
        Self::new(BPF_LDX | BPF_MEM | BPF_B, dst, src, off, 0)
    }

    /// `dst = src` (64-bit).
    const fn mov64_reg(dst: u8, src: u8) -> Self {
        Self::new(BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0)
    }

    /// `dst += imm`.
    const fn add64_imm(dst: u8, imm: i32) -> Self {
        Self::new(BPF_ALU64 | BPF_ADD | BPF_K, dst, 0, 0, imm)
    }

    /// `dst &= imm`.
    const fn and64_imm(dst: u8, imm: i32) -> Self {
        Self::new(BPF_ALU64 | BPF_AND | BPF_K, dst, 0, 0, imm)
    }

    /// `if dst <op> imm goto +off`.
    const fn jmp_imm(op: u8, dst: u8, imm: i32, off: i16) -> Self {
        Self::new(BPF_JMP | op | BPF_K, dst, 0, off, imm)
    }

    /// `if dst <op> src goto +off` (unsigned compare).
    const fn jmp_reg(op: u8, dst: u8, src: u8, off: i16) -> Self {
        Self::new(BPF_JMP | op | BPF_X, dst, src, off, 0)
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

/// A 16-bit field in network order, as `load_u16` reads it on this host.
const fn wire16(v: u16) -> i32 {
    u16::from_ne_bytes(v.to_be_bytes()) as i32
}

/// A program builder with forward jumps to named labels.
struct Asm {
    insns: Vec<Insn>,
    /// (instruction index, label) of jumps to patch.
    fixups: Vec<(usize, &'static str)>,
    labels: Vec<(&'static str, usize)>,
}

impl Asm {
    fn new() -> Self {
        Self {
            insns: Vec::new(),
            fixups: Vec::new(),
            labels: Vec::new(),
        }
    }
    fn op(&mut self, i: Insn) {
        self.insns.push(i);
    }
    fn jump(&mut self, i: Insn, to: &'static str) {
        self.fixups.push((self.insns.len(), to));
        self.insns.push(i);
    }
    fn label(&mut self, name: &'static str) {
        self.labels.push((name, self.insns.len()));
    }
    fn finish(mut self) -> Vec<Insn> {
        for (at, to) in self.fixups {
            let target = self
                .labels
                .iter()
                .find(|(n, _)| *n == to)
                .map(|(_, i)| *i)
                .expect("every jump's label is placed");
            // Offsets count from the instruction after the jump.
            self.insns[at].off = (target as isize - at as isize - 1) as i16;
        }
        self.insns
    }
}

/// The underlay's program: IPv4 (20-byte header, not a fragment) or IPv6 (UDP as the
/// first next header) UDP datagrams to one of `udp_ports` go to the AF_XDP socket of
/// the queue; everything else (ARP, other traffic, fragments, IPv4 options) passes to
/// the kernel stack.
///
/// ```text
///   r6 = r1; r2 = ctx->data; r3 = ctx->data_end
///   r5 = eth.type
///   if r5 == IPv6 goto v6; if r5 != IPv4 goto pass
///   if data + 42 > data_end goto pass          ; Ethernet + IPv4 + UDP
///   if ip.ver_ihl != 0x45 goto pass; if ip.proto != 17 goto pass
///   if ip.frag & 0x3fff goto pass
///   r5 = udp.dst (at 36); goto port
/// v6:
///   if data + 62 > data_end goto pass; if ip6.next != 17 goto pass
///   r5 = udp.dst (at 56)
/// port:
///   if r5 == p goto redirect   (for each port)
/// pass: r0 = XDP_PASS; exit
/// redirect: redirect_map(xsks, ctx->rx_queue_index, XDP_PASS); exit
/// ```
pub(super) fn udp_port_program(xskmap_fd: i32, udp_ports: &[u16]) -> Vec<Insn> {
    let mut a = Asm::new();
    a.op(Insn::mov64_reg(6, 1));
    a.op(Insn::load_u32(2, 1, XDP_MD_DATA));
    a.op(Insn::load_u32(3, 1, XDP_MD_DATA_END));
    // Bounds for the Ethernet header first (the verifier checks every access).
    a.op(Insn::mov64_reg(4, 2));
    a.op(Insn::add64_imm(4, 14));
    a.jump(Insn::jmp_reg(BPF_JGT, 4, 3, 0), "pass");
    a.op(Insn::load_u16(5, 2, 12));
    a.jump(Insn::jmp_imm(BPF_JEQ, 5, wire16(0x86dd), 0), "v6");
    a.jump(Insn::jmp_imm(BPF_JNE, 5, wire16(0x0800), 0), "pass");
    a.op(Insn::mov64_reg(4, 2));
    a.op(Insn::add64_imm(4, 14 + 20 + 8));
    a.jump(Insn::jmp_reg(BPF_JGT, 4, 3, 0), "pass");
    a.op(Insn::load_u8(5, 2, 14));
    a.jump(Insn::jmp_imm(BPF_JNE, 5, 0x45, 0), "pass");
    a.op(Insn::load_u8(5, 2, 14 + 9));
    a.jump(Insn::jmp_imm(BPF_JNE, 5, 17, 0), "pass");
    a.op(Insn::load_u16(5, 2, 14 + 6));
    a.op(Insn::and64_imm(5, wire16(0x3fff)));
    a.jump(Insn::jmp_imm(BPF_JNE, 5, 0, 0), "pass");
    a.op(Insn::load_u16(5, 2, 14 + 20 + 2));
    a.jump(Insn::new(BPF_JMP, 0, 0, 0, 0), "port"); // ja
    a.label("v6");
    a.op(Insn::mov64_reg(4, 2));
    a.op(Insn::add64_imm(4, 14 + 40 + 8));
    a.jump(Insn::jmp_reg(BPF_JGT, 4, 3, 0), "pass");
    a.op(Insn::load_u8(5, 2, 14 + 6));
    a.jump(Insn::jmp_imm(BPF_JNE, 5, 17, 0), "pass");
    a.op(Insn::load_u16(5, 2, 14 + 40 + 2));
    a.label("port");
    for &p in udp_ports {
        a.jump(Insn::jmp_imm(BPF_JEQ, 5, wire16(p), 0), "redirect");
    }
    a.label("pass");
    a.op(Insn::mov64_imm(0, XDP_PASS));
    a.op(Insn::exit());
    a.label("redirect");
    let [ld_lo, ld_hi] = Insn::ld_map_fd(1, xskmap_fd);
    a.op(Insn::load_u32(2, 6, XDP_MD_RX_QUEUE_INDEX));
    a.op(ld_lo);
    a.op(ld_hi);
    a.op(Insn::mov64_imm(3, XDP_PASS));
    a.op(Insn::call(BPF_FUNC_REDIRECT_MAP));
    a.op(Insn::exit());
    a.finish()
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
    fn the_udp_port_program_jumps_to_its_labels() {
        let p = udp_port_program(7, &[4789, 6081]);
        let bytes: Vec<[u8; 8]> = p.iter().map(|i| i.to_bytes()).collect();
        // ethertype IPv6 (0x86dd) compared as the host reads it: 0xdd86.
        assert!(bytes
            .iter()
            .any(|b| b[0] == 0x15 && b[4..6] == [0x86, 0xdd]));
        // 4789 = 0x12b5, read on a little-endian host as 0xb512.
        let port_jumps: Vec<usize> = (0..p.len())
            .filter(|&i| bytes[i][0] == 0x15 && bytes[i][4..8] == [0x12, 0xb5, 0, 0])
            .collect();
        assert_eq!(port_jumps.len(), 1);
        // Every jump lands inside the program, forward.
        for (i, b) in bytes.iter().enumerate() {
            if b[0] & 0x07 == BPF_JMP && b[0] & 0xf0 != BPF_CALL && b[0] & 0xf0 != BPF_EXIT {
                let off = i16::from_le_bytes([b[2], b[3]]);
                assert!(
                    off >= 0 && (i as i64 + 1 + off as i64) < p.len() as i64,
                    "jump {i}"
                );
            }
        }
        // The redirect tail is the one of the plain program.
        assert_eq!(bytes[p.len() - 1], [0x95, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes[p.len() - 2], [0x85, 0, 0, 0, 51, 0, 0, 0]);
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
