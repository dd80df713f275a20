//! Encapsulation from a prebuilt outer-header template, as OVS and DPDK do it: the
//! outer Ethernet, IP, UDP and tunnel headers are built once per rule; per packet only
//! the lengths, the IP id, the UDP source port (flow entropy) and the checksums are
//! patched, and the header is written into the frame's headroom.

use std::net::IpAddr;

use std::sync::Arc;

use super::{Tunnel, TunnelKind, TunnelSpec};
use crate::wire::checksum;
use crate::Frame;

/// Largest outer header: Ethernet 14 + IPv6 40 + UDP 8 + Geneve 8 + 4 options.
pub const MAX_OUTER_LEN: usize = 14 + 40 + 8 + 8 + 252;

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const UDP_LEN: usize = 8;
const PROTO_UDP: u8 = 17;
/// Source ports are drawn from the dynamic range (RFC 7348 section 5, RFC 8926 3.3).
const ENTROPY_PORT_BASE: u16 = 49152;

/// Why a frame could not be encapsulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncapError {
    /// The frame has less headroom than the outer header needs.
    #[error("frame has {have} bytes of headroom, the outer header needs {need}")]
    NoHeadroom {
        /// Headroom needed.
        need: usize,
        /// Headroom available.
        have: usize,
    },
    /// The encapsulated packet would exceed the underlay MTU (no outer fragmentation).
    #[error("encapsulated packet of {len} bytes exceeds the underlay MTU {mtu}")]
    TooBig {
        /// IP length after encapsulation.
        len: usize,
        /// The underlay MTU.
        mtu: usize,
    },
    /// Geneve options longer than the header can describe (252 bytes).
    #[error("Geneve options of {0} bytes exceed the 252-byte limit")]
    OptionsTooLong(usize),
    /// A Geneve option whose data is not a multiple of 4 bytes or exceeds 124 bytes.
    #[error("Geneve option data of {0} bytes: it must be a multiple of 4 and at most 124")]
    BadOption(usize),
    /// A VNI (or tenant id) that does not fit the tunnel's header.
    #[error("VNI {vni} does not fit the tunnel header (max {max})")]
    VniRange {
        /// The VNI.
        vni: u32,
        /// The largest the kind carries.
        max: u32,
    },
    /// Outer source and destination of different IP families.
    #[error("outer source and destination must both be IPv4 or both IPv6")]
    MixedFamilies,
    /// A custom tunnel kind with no [`Tunnel`] registered for it.
    #[error(
        "no tunnel implementation for {0:?}; build the template with EncapTemplate::with_tunnel"
    )]
    UnknownTunnel(TunnelKind),
}

impl EncapError {
    /// Label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            EncapError::NoHeadroom { .. } => "no_headroom",
            EncapError::TooBig { .. } => "mtu_exceeded",
            EncapError::OptionsTooLong(_) | EncapError::BadOption(_) => "bad_options",
            EncapError::VniRange { .. } => "vni_range",
            EncapError::MixedFamilies => "mixed_families",
            EncapError::UnknownTunnel(_) => "unknown_tunnel",
        }
    }
}

/// A prebuilt outer header for one tunnel rule.
#[derive(Clone)]
pub struct EncapTemplate {
    bytes: Box<[u8]>,
    kind: TunnelKind,
    v6: bool,
    udp_off: usize,
    tunnel_off: usize,
    /// Ones-complement sum of the IPv4 header with total length, id and checksum zero.
    ip_base: u32,
    /// Writes the tunnel header and patches it per packet.
    tunnel: Arc<dyn Tunnel>,
    patches: bool,
    /// Underlay MTU (IP packet size limit).
    mtu: usize,
}

impl std::fmt::Debug for EncapTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncapTemplate")
            .field("kind", &self.kind)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl EncapTemplate {
    /// Builds the template for `spec`, for an underlay with IP MTU `mtu` (at most the
    /// largest IP packet the outer header can describe: 65535 bytes for IPv4, 65575
    /// for IPv6; a larger `mtu` is capped).
    pub fn new(spec: &TunnelSpec, mtu: usize) -> Result<Self, EncapError> {
        let tunnel = super::builtin(spec.kind).ok_or(EncapError::UnknownTunnel(spec.kind))?;
        Self::with_tunnel(spec, tunnel, mtu)
    }

    /// Like [`new`](EncapTemplate::new), with the tunnel header written by `tunnel`
    /// (for tunnels added outside this crate).
    pub fn with_tunnel(
        spec: &TunnelSpec,
        tunnel: Arc<dyn Tunnel>,
        mtu: usize,
    ) -> Result<Self, EncapError> {
        let v6 = spec.outer_dst.is_ipv6();
        let ip_len = if v6 { IPV6_LEN } else { IPV4_LEN };
        if let Some(o) = spec
            .options
            .iter()
            .find(|o| o.data.len() % 4 != 0 || o.data.len() > 124)
        {
            return Err(EncapError::BadOption(o.data.len()));
        }
        if spec.vni > tunnel.max_vni() {
            return Err(EncapError::VniRange {
                vni: spec.vni,
                max: tunnel.max_vni(),
            });
        }
        let tunnel_len = tunnel.header_len(spec)?;
        let (udp_off, tunnel_off) = (ETH_LEN + ip_len, ETH_LEN + ip_len + UDP_LEN);
        let mut b = vec![0u8; tunnel_off + tunnel_len];
        b[0..6].copy_from_slice(&spec.outer_dst_mac);
        b[6..12].copy_from_slice(&spec.outer_src_mac);
        b[12..14].copy_from_slice(&(if v6 { 0x86DDu16 } else { 0x0800u16 }).to_be_bytes());
        let ip = &mut b[ETH_LEN..udp_off];
        match (spec.outer_src, spec.outer_dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                ip[0] = 0x45;
                ip[6] = if spec.df { 0x40 } else { 0 };
                ip[8] = spec.ttl;
                ip[9] = PROTO_UDP;
                ip[12..16].copy_from_slice(&src.octets());
                ip[16..20].copy_from_slice(&dst.octets());
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                ip[0] = 0x60;
                ip[6] = PROTO_UDP;
                ip[7] = spec.ttl;
                ip[8..24].copy_from_slice(&src.octets());
                ip[24..40].copy_from_slice(&dst.octets());
            }
            _ => return Err(EncapError::MixedFamilies),
        }
        let ip_base = if v6 {
            0
        } else {
            checksum::sum(&b[ETH_LEN..udp_off])
        };
        b[udp_off + 2..udp_off + 4].copy_from_slice(&spec.udp_dst_port.to_be_bytes());
        tunnel.write_template(spec, &mut b[tunnel_off..])?;
        // The IPv4 total length and the IPv6 payload length are 16-bit fields: no MTU
        // lets an IP packet grow past what they can describe (jumbograms, RFC 2675,
        // are not supported), or the lengths written per packet would wrap.
        let mtu = mtu.min(if v6 { IPV6_LEN + 0xffff } else { 0xffff });
        Ok(Self {
            bytes: b.into_boxed_slice(),
            kind: spec.kind,
            patches: tunnel.patches(),
            tunnel,
            v6,
            udp_off,
            tunnel_off,
            ip_base,
            mtu,
        })
    }

    /// Bytes the outer header adds to a frame.
    #[inline]
    pub fn overhead(&self) -> usize {
        self.bytes.len()
    }

    /// The largest inner frame that fits the underlay MTU once encapsulated.
    #[inline]
    pub fn max_inner_len(&self) -> usize {
        (self.mtu + ETH_LEN).saturating_sub(self.bytes.len())
    }

    /// The tunnel kind.
    pub fn kind(&self) -> TunnelKind {
        self.kind
    }

    /// The template bytes (outer header with per-packet fields zero).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Encapsulates `frame` in place: writes the outer header into its headroom and
    /// patches the per-packet fields. `ip_id` is the outer IPv4 identification;
    /// `entropy` (a hash of the inner flow) picks the UDP source port.
    #[inline]
    pub fn encap(&self, frame: &mut Frame, ip_id: u16, entropy: u32) -> Result<(), EncapError> {
        let inner_len = frame.len();
        self.push_header(frame, inner_len, ip_id, entropy)?;
        if self.v6 {
            // IPv6 requires a UDP checksum (RFC 8200); it covers the whole packet.
            let u = self.udp_off;
            let data = frame.data_mut();
            let udp_len = u32::from(u16::from_be_bytes([data[u + 4], data[u + 5]]));
            let (src, dst) = (ipv6_at(data, ETH_LEN + 8), ipv6_at(data, ETH_LEN + 24));
            let pseudo = checksum::pseudo_v6(src, dst, PROTO_UDP, udp_len);
            let sum = checksum::combine(pseudo, checksum::sum(&data[u..]));
            let csum = match checksum::finish(sum) {
                0 => 0xffff,
                c => c,
            };
            data[u + 6..u + 8].copy_from_slice(&csum.to_be_bytes());
        }
        Ok(())
    }

    /// Encapsulates a super-frame kept whole for an underlay that segments it (the
    /// socket underlay's GSO send, see `dataplane`): writes the outer header once, with
    /// the lengths of one `segment_len`-byte inner segment, and records its length in
    /// `frame.meta.outer_len`. Every segment then leaves behind this header (the
    /// socket writes the outer IP and UDP headers and checksums); fails as
    /// [`EncapTemplate::encap`] does when such a segment would not fit the MTU.
    pub fn encap_super(
        &self,
        frame: &mut Frame,
        ip_id: u16,
        entropy: u32,
        segment_len: usize,
    ) -> Result<(), EncapError> {
        self.push_header(frame, segment_len, ip_id, entropy)?;
        frame.meta.outer_len = self.bytes.len() as u16;
        Ok(())
    }

    /// Writes the outer header for an inner frame of `inner_len` bytes into the
    /// headroom of `frame` (all but the IPv6 UDP checksum).
    #[inline]
    fn push_header(
        &self,
        frame: &mut Frame,
        inner_len: usize,
        ip_id: u16,
        entropy: u32,
    ) -> Result<(), EncapError> {
        let total = self.bytes.len() + inner_len;
        if total - ETH_LEN > self.mtu {
            return Err(EncapError::TooBig {
                len: total - ETH_LEN,
                mtu: self.mtu,
            });
        }
        let have = frame.headroom();
        let Some(hdr) = frame.try_push_front(self.bytes.len()) else {
            return Err(EncapError::NoHeadroom {
                need: self.bytes.len(),
                have,
            });
        };
        hdr.copy_from_slice(&self.bytes);
        let ip_len = (total - ETH_LEN) as u16;
        let udp_len = (total - self.udp_off) as u16;
        let src_port = ENTROPY_PORT_BASE | (entropy as u16 & 0x3fff);
        if self.v6 {
            hdr[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&udp_len.to_be_bytes());
        } else {
            hdr[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&ip_len.to_be_bytes());
            hdr[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&ip_id.to_be_bytes());
            let csum = checksum::finish(checksum::combine(
                self.ip_base,
                u32::from(ip_len) + u32::from(ip_id),
            ));
            hdr[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&csum.to_be_bytes());
        }
        let u = self.udp_off;
        hdr[u..u + 2].copy_from_slice(&src_port.to_be_bytes());
        hdr[u + 4..u + 6].copy_from_slice(&udp_len.to_be_bytes());
        if self.patches {
            self.tunnel.patch(&mut hdr[self.tunnel_off..], entropy);
        }
        Ok(())
    }
}

fn ipv6_at(data: &[u8], at: usize) -> std::net::Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&data[at..at + 16]);
    o.into()
}

/// A hash of the inner frame's flow (addresses, protocol and ports) for the outer UDP
/// source port, so that ECMP in the underlay keeps each inner flow on one path. Reads
/// only what is there: a short or odd frame hashes what it has, never panics. The flow
/// fields are gathered into one small buffer and mixed a word at a time.
#[inline]
pub fn flow_hash(inner: &[u8]) -> u32 {
    let mut key = [0u8; 64];
    let mut n = 0;
    let mut put = |bytes: &[u8]| {
        let m = bytes.len().min(key.len() - n);
        key[n..n + m].copy_from_slice(&bytes[..m]);
        n += m;
    };
    let get = |a: usize, b: usize| inner.get(a..b).unwrap_or(&[]);
    let byte = |at: usize| inner.get(at).copied().unwrap_or(0);
    put(get(0, 12)); // MACs
    let mut l3 = 14;
    let mut ethertype = u16::from_be_bytes([byte(12), byte(13)]);
    if ethertype == 0x8100 {
        l3 = 18;
        ethertype = u16::from_be_bytes([byte(16), byte(17)]);
    }
    match ethertype {
        0x0800 => {
            let ihl = usize::from(inner.get(l3).copied().unwrap_or(0x45) & 0x0f) * 4;
            put(get(l3 + 9, l3 + 10));
            put(get(l3 + 12, l3 + 20));
            put(get(l3 + ihl, l3 + ihl + 4));
        }
        0x86DD => {
            put(get(l3 + 6, l3 + 7));
            put(get(l3 + 8, l3 + 40));
            put(get(l3 + 40, l3 + 44));
        }
        _ => put(get(12, 14)),
    }
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15 ^ n as u64;
    for word in key[..n.div_ceil(8) * 8].chunks_exact(8) {
        let w = u64::from_le_bytes([
            word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7],
        ]);
        h = (h ^ w).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 32;
    }
    (h ^ (h >> 29)) as u32
}
