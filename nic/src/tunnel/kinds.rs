//! The [`Tunnel`] trait and the built-in tunnels: VXLAN, Geneve and PWT.
//!
//! A tunnel only knows its own header: how long it is for a rule, how to write it into
//! a template, what to patch per packet, and how to decode it. The outer Ethernet, IP
//! and UDP headers, lengths, checksums, MTU and rule matching are shared, so a new
//! tunnel is one `impl Tunnel` (see `nic/tests/tunnel_custom.rs`).

use std::fmt;
use std::sync::Arc;

use super::{DecapConfig, DecapError, EncapError, TunnelKind, TunnelSpec};
use crate::wire::{checksum, ethertype, GenevePacket, PwtPacket, VxlanPacket, WireError};

/// One stateless tunnel header format.
pub trait Tunnel: Send + Sync + fmt::Debug + 'static {
    /// The kind rules name it by.
    fn kind(&self) -> TunnelKind;

    /// Largest VNI / tenant id the header carries.
    fn max_vni(&self) -> u32 {
        self.kind().max_vni()
    }

    /// Header length for `spec`.
    fn header_len(&self, spec: &TunnelSpec) -> Result<usize, EncapError>;

    /// Writes the header for `spec` into `header` (exactly `header_len` bytes), with
    /// per-packet fields zero.
    fn write_template(&self, spec: &TunnelSpec, header: &mut [u8]) -> Result<(), EncapError>;

    /// Whether [`patch`](Tunnel::patch) must run for every packet.
    fn patches(&self) -> bool {
        false
    }

    /// Per-packet fields (entropy, header checksum) of a header written from the template.
    fn patch(&self, _header: &mut [u8], _entropy: u32) {}

    /// Decodes the header at the start of a UDP payload: the VNI and the header length
    /// (the inner Ethernet frame follows). Must not panic on any input.
    fn decode(&self, payload: &[u8], config: &DecapConfig) -> Result<(u32, usize), DecapError>;
}

/// VXLAN (RFC 7348): 8 bytes, I flag, 24-bit VNI.
#[derive(Debug, Clone, Copy, Default)]
pub struct Vxlan;

/// Geneve (RFC 8926): 8 bytes plus TLV options, 24-bit VNI.
#[derive(Debug, Clone, Copy, Default)]
pub struct Geneve;

/// PWT, pipewright's tunnel (see [`PwtPacket`](crate::wire::PwtPacket)): 12 bytes, 32-bit
/// tenant id, flow entropy, and a checksum over its own header.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pwt;

/// The built-in tunnel of `kind`, or `None` for [`TunnelKind::Custom`].
pub fn builtin(kind: TunnelKind) -> Option<Arc<dyn Tunnel>> {
    match kind {
        TunnelKind::Vxlan => Some(Arc::new(Vxlan)),
        TunnelKind::Geneve => Some(Arc::new(Geneve)),
        TunnelKind::Pwt => Some(Arc::new(Pwt)),
        TunnelKind::Custom(_) => None,
    }
}

fn vni24(vni: u32) -> [u8; 3] {
    let b = vni.to_be_bytes();
    [b[1], b[2], b[3]]
}

impl Tunnel for Vxlan {
    fn kind(&self) -> TunnelKind {
        TunnelKind::Vxlan
    }
    fn header_len(&self, _spec: &TunnelSpec) -> Result<usize, EncapError> {
        Ok(8)
    }
    fn write_template(&self, spec: &TunnelSpec, h: &mut [u8]) -> Result<(), EncapError> {
        h[0] = 0x08; // I flag: the VNI is valid
        h[4..7].copy_from_slice(&vni24(spec.vni));
        Ok(())
    }
    #[inline]
    fn decode(&self, payload: &[u8], _config: &DecapConfig) -> Result<(u32, usize), DecapError> {
        let v = VxlanPacket::new_checked(payload)?;
        if !v.vni_valid() {
            return Err(WireError::BadField {
                layer: "vxlan",
                field: "flags",
            }
            .into());
        }
        Ok((v.vni(), 8))
    }
}

impl Tunnel for Geneve {
    fn kind(&self) -> TunnelKind {
        TunnelKind::Geneve
    }
    fn header_len(&self, spec: &TunnelSpec) -> Result<usize, EncapError> {
        let options: usize = spec.options.iter().map(|o| 4 + o.data.len()).sum();
        if options > 252 {
            return Err(EncapError::OptionsTooLong(options));
        }
        Ok(8 + options)
    }
    fn write_template(&self, spec: &TunnelSpec, h: &mut [u8]) -> Result<(), EncapError> {
        let options = h.len() - 8;
        h[0] = (options / 4) as u8; // version 0, option length in 4-byte words
        h[1] = if spec.options.iter().any(|o| o.kind & 0x80 != 0) {
            0x40
        } else {
            0
        }; // C bit
        h[2..4].copy_from_slice(&ethertype::TEB.to_be_bytes());
        h[4..7].copy_from_slice(&vni24(spec.vni));
        let mut at = 8;
        for o in &spec.options {
            h[at..at + 2].copy_from_slice(&o.class.to_be_bytes());
            h[at + 2] = o.kind;
            h[at + 3] = (o.data.len() / 4) as u8 & 0x1f;
            h[at + 4..at + 4 + o.data.len()].copy_from_slice(&o.data);
            at += 4 + o.data.len();
        }
        Ok(())
    }
    #[inline]
    fn decode(&self, payload: &[u8], config: &DecapConfig) -> Result<(u32, usize), DecapError> {
        let g = GenevePacket::new_checked(payload)?;
        if g.protocol_type() != ethertype::TEB {
            return Err(DecapError::NotEthernet(g.protocol_type()));
        }
        if g.oam() {
            return Err(DecapError::Control);
        }
        if g.critical() && !config.accept_critical_options {
            return Err(DecapError::CriticalOptions);
        }
        Ok((g.vni(), g.header_len()))
    }
}

impl Tunnel for Pwt {
    fn kind(&self) -> TunnelKind {
        TunnelKind::Pwt
    }
    fn header_len(&self, _spec: &TunnelSpec) -> Result<usize, EncapError> {
        Ok(12)
    }
    fn write_template(&self, spec: &TunnelSpec, h: &mut [u8]) -> Result<(), EncapError> {
        h[0] = 0x13; // version 1, header length 3 words
        h[2..4].copy_from_slice(&ethertype::TEB.to_be_bytes());
        h[4..8].copy_from_slice(&spec.vni.to_be_bytes());
        Ok(())
    }
    fn patches(&self) -> bool {
        true
    }
    #[inline]
    fn patch(&self, h: &mut [u8], entropy: u32) {
        h[8..10].copy_from_slice(&(entropy as u16).to_be_bytes());
        h[10..12].copy_from_slice(&[0, 0]);
        let csum = checksum::finish(checksum::sum(&h[..12]));
        h[10..12].copy_from_slice(&csum.to_be_bytes());
    }
    #[inline]
    fn decode(&self, payload: &[u8], _config: &DecapConfig) -> Result<(u32, usize), DecapError> {
        let p = PwtPacket::new_checked(payload)?;
        if !p.verify_checksum() {
            return Err(WireError::BadChecksum { layer: "pwt" }.into());
        }
        if p.oam() {
            return Err(DecapError::Control);
        }
        if p.protocol_type() != ethertype::TEB {
            return Err(DecapError::NotEthernet(p.protocol_type()));
        }
        Ok((p.tenant_id(), p.header_len()))
    }
}
