//! Talking to a VM process: its start, commands to its guest, and its end.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use crate::error::Error;
use crate::vmproc::{Reply, VmSpec};

use super::{Host, VmId};

impl Host {
    pub(super) fn spawn(
        &self,
        id: VmId,
        spec: &VmSpec,
    ) -> Result<(Child, ChildStdin, ChildStdout), Error> {
        let (prog, args) =
            self.config
                .vm_command
                .split_first()
                .ok_or_else(|| Error::VmProcess {
                    vm: id,
                    reason: "no VM command configured".into(),
                })?;
        let mut child = Command::new(prog)
            .args(args)
            .arg("--spec")
            .arg(serde_json::to_string(spec).expect("a spec serializes"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::VmProcess {
                vm: id,
                reason: format!("cannot start {prog:?}: {e}"),
            })?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        Ok((child, stdin, stdout))
    }

    fn request(&mut self, id: VmId, line: &str) -> Result<Reply, Error> {
        let reply_limit = self.reply_limit();
        let vm = self.vms.get_mut(&id).ok_or(Error::UnknownVm(id))?;
        let sent = vm.stdin.as_mut().is_some_and(|s| {
            s.write_all(format!("{line}\n").as_bytes()).is_ok() && s.flush().is_ok()
        });
        if !sent {
            return Err(Error::VmProcess {
                vm: id,
                reason: "VM process is gone".into(),
            });
        }
        match read_reply(id, &mut vm.stdout, reply_limit)? {
            Reply::Failed(e) => {
                metrics::counter!("memshare_guest_errors").increment(1);
                Err(e.into())
            }
            r => Ok(r),
        }
    }

    /// Have VM `id`'s guest checksum its image; returns its per-page checksums.
    pub fn checksum(&mut self, id: VmId) -> Result<Vec<u32>, Error> {
        match self.request(id, "checksum")? {
            Reply::Checksums(c) => Ok(c),
            r => Err(Error::VmProcess {
                vm: id,
                reason: format!("expected checksums, got {}", r.kind()),
            }),
        }
    }

    /// Have VM `id`'s guest read `count` image blocks from `first` through its
    /// paravirtual block device; returns its checksum of each block and how many reads
    /// the device served so far (each by mapping the block's stored page).
    pub fn device_read(
        &mut self,
        id: VmId,
        first: u32,
        count: u32,
    ) -> Result<(Vec<u32>, u64), Error> {
        match self.request(id, &format!("devread {first} {count}"))? {
            Reply::DeviceRead { sums, reads } => Ok((sums, reads)),
            r => Err(Error::VmProcess {
                vm: id,
                reason: format!("expected device checksums, got {}", r.kind()),
            }),
        }
    }

    /// Have VM `id`'s guest write its selected pages; returns how many it wrote.
    pub fn write(&mut self, id: VmId) -> Result<u32, Error> {
        match self.request(id, "write")? {
            Reply::Written(n) => Ok(n),
            r => Err(Error::VmProcess {
                vm: id,
                reason: format!("expected a write count, got {}", r.kind()),
            }),
        }
    }

    /// How long the host waits for a VM process's reply: the guest's own deadline
    /// plus a margin for the process (loading an image, writing the reply).
    pub(super) fn reply_limit(&self) -> std::time::Duration {
        self.config.deadline.saturating_mul(2) + std::time::Duration::from_secs(10)
    }

    /// Kill VM `id` with SIGKILL (as a crash would) and release what it held.
    pub fn kill(&mut self, id: VmId) -> Result<(), Error> {
        let vm = self.vms.get_mut(&id).ok_or(Error::UnknownVm(id))?;
        let _ = vm.child.kill();
        let _ = vm.child.wait();
        self.release(id);
        Ok(())
    }

    /// Stop VM `id` (halt its guest) and release what it held.
    pub fn stop(&mut self, id: VmId) -> Result<(), Error> {
        let _ = self.request(id, "halt");
        let vm = self.vms.get_mut(&id).ok_or(Error::UnknownVm(id))?;
        vm.stdin = None;
        let _ = vm.child.wait();
        self.release(id);
        Ok(())
    }
}

/// Reads a VM process's reply, waiting at most `within` for it to begin (its guest has
/// its own deadline; this one catches a VM process that is stopped or wedged, which
/// would otherwise hold the whole host).
pub(super) fn read_reply(
    id: VmId,
    out: &mut BufReader<ChildStdout>,
    within: std::time::Duration,
) -> Result<Reply, Error> {
    if !out.buffer().contains(&b'\n') {
        match crate::sys::wait_readable(out.get_ref(), within) {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::VmProcess {
                    vm: id,
                    reason: format!(
                        "VM process sent no reply within {} s (stopped or wedged); stop or kill it",
                        within.as_secs()
                    ),
                })
            }
            Err(e) => {
                return Err(Error::VmProcess {
                    vm: id,
                    reason: format!("waiting for the VM process's reply: {e}"),
                })
            }
        }
    }
    let mut line = String::new();
    match out.read_line(&mut line) {
        Ok(0) | Err(_) => Err(Error::VmProcess {
            vm: id,
            reason: "VM process exited".into(),
        }),
        Ok(_) => serde_json::from_str(&line).map_err(|e| Error::VmProcess {
            vm: id,
            reason: format!("bad reply {line:?}: {e}"),
        }),
    }
}
