//! The ethtool settings the harness needs: transmit checksum offload off on the
//! remote's underlay veth, and GRO on on the data plane's end (as on a NIC).
//!
//! A veth never puts frames on a wire, so with transmit checksum offload on, the
//! kernel leaves a vxlan packet's *inner* L4 checksum partial (only the pseudo-header
//! sum) all the way into the receiver's socket. A physical NIC would have completed it
//! before sending; turning the offload off makes the kernel complete it in software,
//! so what reaches the data plane is what a real underlay carries.
#![allow(unsafe_code)]

use std::io;

use crate::host::HostError;

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

fn ethtool(ifname: &str, value: &mut EthtoolValue) -> io::Result<()> {
    if ifname.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: value,
        _pad: [0; 16],
    };
    for (d, s) in req.name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: a datagram socket for the ioctl; the result is checked and closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCETHTOOL reads an ifreq whose data points at a live ethtool_value of
    // the layout the command expects; both outlive the call.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL, &mut req as *mut IfReq) };
    let err = io::Error::last_os_error();
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(err);
    }
    Ok(())
}

/// Turns transmit checksum offload off on `ifname` (in the calling thread's
/// namespace).
pub(crate) fn tx_checksum_off(ifname: &str) -> Result<(), HostError> {
    let mut v = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    ethtool(ifname, &mut v).map_err(|source| HostError::Io {
        step: format!("turn tx checksum offload off on {ifname}"),
        source,
    })
}

/// Whether transmit checksum offload is on for `ifname`.
pub(crate) fn tx_checksum(ifname: &str) -> Result<bool, HostError> {
    let mut v = EthtoolValue {
        cmd: ETHTOOL_GTXCSUM,
        data: 0,
    };
    ethtool(ifname, &mut v).map_err(|source| HostError::Io {
        step: format!("read tx checksum offload of {ifname}"),
        source,
    })?;
    Ok(v.data != 0)
}

/// Turns receive offload (GRO) on for `ifname` (in the calling thread's namespace),
/// as a physical NIC's driver has it by default: a veth then receives through NAPI,
/// and the kernel coalesces a flow's datagrams for a socket that asked for `UDP_GRO`
/// (the data plane's underlay) into one buffer.
pub(crate) fn gro_on(ifname: &str) -> Result<(), HostError> {
    let mut v = EthtoolValue {
        cmd: ETHTOOL_SGRO,
        data: 1,
    };
    ethtool(ifname, &mut v).map_err(|source| HostError::Io {
        step: format!("turn GRO on on {ifname}"),
        source,
    })
}

/// Whether GRO is on for `ifname`.
pub(crate) fn gro(ifname: &str) -> Result<bool, HostError> {
    let mut v = EthtoolValue {
        cmd: ETHTOOL_GGRO,
        data: 0,
    };
    ethtool(ifname, &mut v).map_err(|source| HostError::Io {
        step: format!("read GRO of {ifname}"),
        source,
    })?;
    Ok(v.data != 0)
}
