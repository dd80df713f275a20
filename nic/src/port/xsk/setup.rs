//! Attaching the XDP program and binding the socket, with errors that say what to do.

use std::os::fd::{AsFd, OwnedFd};

use super::config::{AfXdpBuilder, BindMode};
use super::{prog, sys};
use crate::port::PortError;

/// `BPF_F_XDP_HAS_FRAGS`: the program accepts multi-buffer frames.
const BPF_F_XDP_HAS_FRAGS: u32 = 1 << 5;
/// `EBUSY` bind retries, 20 ms apart.
const BIND_BUSY_RETRIES: u32 = 50;

/// Creates the XSKMAP, loads the redirect program and attaches it to `ifindex`.
pub(super) fn attach(
    cfg: &AfXdpBuilder,
    ifindex: u32,
) -> Result<(OwnedFd, OwnedFd, OwnedFd), PortError> {
    let xskmap = sys::xskmap_create(cfg.queue + 1)
        .map_err(|e| PortError::io("create XSKMAP (BPF_MAP_CREATE)", e))?;
    let map_fd = std::os::fd::AsRawFd::as_raw_fd(&xskmap);
    let insns = match &cfg.udp_ports {
        Some(ports) => prog::udp_port_program(map_fd, ports),
        None => prog::redirect_program(map_fd),
    };
    let prog_flags = if cfg.multi_buffer {
        BPF_F_XDP_HAS_FRAGS
    } else {
        0
    };
    let prog = sys::prog_load_xdp(&insns, c"GPL", prog_flags).map_err(|(e, log)| {
        PortError::io(
            format!("load XDP program (BPF_PROG_LOAD); verifier log: {log:?}"),
            e,
        )
    })?;
    let link =
        sys::link_create_xdp(prog.as_fd(), ifindex, cfg.xdp_mode.attach_flags()).map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::EBUSY) | Some(libc::EEXIST) => {
                    " (another XDP program is attached to the interface)"
                }
                Some(libc::EOPNOTSUPP) => " (no native XDP in this driver: use XdpMode::Generic)",
                Some(libc::ERANGE) => {
                    " (veth: the peer's MTU is too large for a single-buffer XDP program; \
                     lower it, turn multi_buffer on, or use XdpMode::Generic)"
                }
                _ => "",
            };
            let mode = cfg.xdp_mode;
            let name = &cfg.ifname;
            PortError::io(
                format!("attach XDP program to {name} in {mode:?} mode (BPF_LINK_CREATE){hint}"),
                e,
            )
        })?;
    Ok((xskmap, prog, link))
}

/// Binds the socket to the queue. `EBUSY` is retried for a while: the kernel releases
/// a closed socket's hold on a queue asynchronously (a port dropped just before).
pub(super) fn bind(
    cfg: &AfXdpBuilder,
    fd: &OwnedFd,
    ifindex: u32,
    at: &str,
) -> Result<(), PortError> {
    let mut flags = libc::XDP_USE_NEED_WAKEUP;
    flags |= match cfg.bind_mode {
        BindMode::Copy => libc::XDP_COPY,
        BindMode::ZeroCopy => libc::XDP_ZEROCOPY,
    };
    if cfg.multi_buffer {
        flags |= libc::XDP_USE_SG;
    }
    let mut tries = 0;
    let e = loop {
        match sys::bind(fd.as_fd(), ifindex, cfg.queue, flags) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < BIND_BUSY_RETRIES => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => break e,
        }
    };
    let name = &cfg.ifname;
    Err(match (e.raw_os_error(), cfg.bind_mode, cfg.multi_buffer) {
        (Some(libc::EOPNOTSUPP), BindMode::ZeroCopy, _) => PortError::Setup(format!(
            "bind AF_XDP socket to {at} in zero-copy mode: the {name} driver does not \
             support zero-copy ({e}); use BindMode::Copy"
        )),
        (Some(libc::EOPNOTSUPP), _, true) => PortError::Setup(format!(
            "bind AF_XDP socket to {at} with multi-buffer (XDP_USE_SG): not supported \
             here ({e}); turn multi_buffer off"
        )),
        (Some(libc::EBUSY), _, _) => PortError::io(
            format!("bind AF_XDP socket to {at} (another AF_XDP socket holds the queue)"),
            e,
        ),
        _ => PortError::io(format!("bind AF_XDP socket to {at}"), e),
    })
}
