//! VF ports as pipeline stages: a source that awaits frames from a port, and a sink
//! that hands frames to the port of the VF they are for.

use std::sync::{Arc, Mutex, MutexGuard};

use pipewright_runtime::readiness::Readable;
use pipewright_runtime::{AsyncSource, Burst, Failures, Outbox, SourceState, Stage, WorkerLocal};

use super::activity::Activity;
use super::Stop;
use crate::offload::{complete_partial, segment};
use crate::pipeline::NicStats;
use crate::port::{PortError, VfPort};
use crate::{Frame, FramePool};

/// A port shared by its receive source and the transmit sink (one lock per burst).
pub type SharedPort = Arc<Mutex<Box<dyn VfPort>>>;

pub(crate) fn lock(port: &SharedPort) -> MutexGuard<'_, Box<dyn VfPort>> {
    port.lock().unwrap_or_else(|p| p.into_inner())
}

/// Frames the guest sends, as a source: polls the port while the data plane's
/// busy-poll window is open (see `activity`), else awaits the port's descriptor.
pub struct VfRx {
    port: SharedPort,
    pool: Arc<FramePool>,
    stats: NicStats,
    stop: Stop,
    activity: Activity,
    label: &'static str,
    /// A duplicate of the port's descriptor, polled (no lock) while busy-polling: the
    /// port's lock is taken only when something is waiting, so a spinning receive
    /// does not contend with the transmit side on another worker (and a preempted
    /// spinner cannot hold the lock for a scheduler slice).
    peek: Option<std::os::fd::OwnedFd>,
    fd: WorkerLocal<Readable>,
    scratch: Vec<Frame>,
}

impl VfRx {
    /// The stage name its drops are counted under (default `vf-rx`): the AF_XDP
    /// underlay's receive is a port too.
    pub(crate) fn labelled(mut self, label: &'static str) -> Self {
        self.label = label;
        self
    }
}

impl std::fmt::Debug for VfRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfRx").field("port", &self.port).finish()
    }
}

impl VfRx {
    pub(crate) fn new(
        port: SharedPort,
        pool: Arc<FramePool>,
        stats: NicStats,
        stop: Stop,
        activity: Activity,
    ) -> Self {
        let peek = lock(&port).rx_fd().try_clone_to_owned().ok();
        Self {
            pool,
            stats,
            stop,
            activity,
            label: "vf-rx",
            peek,
            fd: WorkerLocal::new(),
            scratch: Vec::new(),
            port,
        }
    }
}

// The data plane's own ports: not listed among the framework trait's implementors.
#[doc(hidden)]
impl AsyncSource for VfRx {
    type Out = Frame;

    async fn pull(&mut self, out: &mut Outbox<'_, Frame>, max: usize) -> SourceState {
        let Self {
            port,
            pool,
            stats,
            stop,
            activity,
            label,
            peek,
            fd,
            scratch,
        } = self;
        let label = *label;
        let fd = match fd.get_or_try_init(|| Readable::new(lock(port).rx_fd())) {
            Ok(fd) => fd,
            Err(error) => {
                tracing::error!(target: "pipewright", %error, "cannot watch a VF port; its receive stops");
                stats.drop_frame(label, "port-unwatchable");
                return SourceState::Exhausted;
            }
        };
        let mut receive = |out: &mut Outbox<'_, Frame>| -> Option<SourceState> {
            let received = lock(port).recv_burst(pool, scratch, max);
            match received {
                Ok(0) => None,
                Ok(frames) => {
                    let bytes = scratch.iter().map(|f| f.len()).sum();
                    for frame in scratch.drain(..) {
                        out.push(frame);
                    }
                    activity.saw_packets(frames, bytes);
                    Some(SourceState::Ready)
                }
                Err(error) => {
                    // The port reported a failure (a bad descriptor, a kernel error):
                    // counted; the port keeps serving.
                    tracing::debug!(target: "pipewright", %error, "VF receive failed");
                    stats.drop_frame(label, "port-error");
                    None
                }
            }
        };
        loop {
            if stop.is_stopped() {
                return SourceState::Exhausted;
            }
            if activity.hot() {
                // Busy-poll: try the port without waiting for the reactor, and let the
                // worker's other stages and tasks run between tries.
                let waiting = peek.as_ref().is_none_or(readable_now);
                match waiting.then(|| receive(out)).flatten() {
                    Some(state) => return state,
                    None => {
                        activity.pause().await;
                        continue;
                    }
                }
            }
            let guard = tokio::select! {
                ready = fd.ready() => match ready {
                    Ok(guard) => guard,
                    Err(_) => return SourceState::Exhausted,
                },
                () = stop.wait() => return SourceState::Exhausted,
                () = activity.woken() => continue,
            };
            match receive(out) {
                Some(state) => return state,
                None => guard.not_ready(),
            }
        }
    }
}

/// Whether `fd` is readable now (a zero-timeout `poll`); errors count as readable,
/// so the receive itself reports them.
fn readable_now(fd: &std::os::fd::OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
}

/// Hands frames to the port of their VF (`meta.vf`). A VF whose receive ring is full
/// drops the frame, counted as `vf-ring-full`, as a NIC does: waiting would stall
/// every other VF behind one guest that does not read.
pub struct VfTx {
    ports: Vec<Option<SharedPort>>,
    pool: Arc<FramePool>,
    stats: NicStats,
    batch: Vec<Frame>,
}

impl std::fmt::Debug for VfTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfTx")
            .field("vfs", &self.ports.iter().filter(|p| p.is_some()).count())
            .finish()
    }
}

impl VfTx {
    pub(crate) fn new(ports: &[(u16, SharedPort)], pool: Arc<FramePool>, stats: NicStats) -> Self {
        let size = ports
            .iter()
            .map(|(vf, _)| usize::from(*vf) + 1)
            .max()
            .unwrap_or(0);
        let mut by_vf = vec![None; size];
        for (vf, port) in ports {
            by_vf[usize::from(*vf)] = Some(port.clone());
        }
        Self {
            ports: by_vf,
            pool,
            stats,
            batch: Vec::new(),
        }
    }

    fn flush(&mut self, vf: u16) {
        if self.batch.is_empty() {
            return;
        }
        let Some(Some(port)) = self.ports.get(usize::from(vf)) else {
            for _ in self.batch.drain(..) {
                self.stats.drop_frame("vf-tx", "no-such-vf");
            }
            return;
        };
        let mut port = lock(port);
        if !port.accepts_super_frames()
            && self
                .batch
                .iter()
                .any(|f| f.meta.gso.is_some() || f.meta.csum.is_some())
        {
            // Cut super-frames (and complete partial checksums) for a port that
            // takes only wire frames.
            let mut cut = Vec::with_capacity(self.batch.len());
            for mut frame in self.batch.drain(..) {
                let result = if frame.meta.gso.is_some() {
                    segment(frame, &self.pool, &mut cut).map(|_| ())
                } else {
                    complete_partial(&mut frame).map(|()| cut.push(frame))
                };
                if let Err(e) = result {
                    self.stats.drop_frame("vf-tx", e.reason());
                }
            }
            self.batch = cut;
        }
        // A couple of retries let the kernel drain a ring that just filled. A frame
        // the port could not carry was dropped and counted by the port: the frames
        // behind it still go (one oversized frame must not cost the burst).
        let mut tries = 0;
        while !self.batch.is_empty() && tries < 3 {
            match port.send_burst(&mut self.batch, &self.pool) {
                Ok(_) if self.batch.is_empty() => return,
                Ok(_) => {
                    tries += 1;
                    std::thread::yield_now();
                }
                Err(PortError::FrameTooLarge { .. }) => {}
                Err(error) => {
                    // The frames still in the batch were not sent; those taken before
                    // the error were, and the port counted any it dropped itself.
                    tracing::debug!(target: "pipewright", %error, vf, "VF send failed");
                    metrics::counter!("pipewright_nic_vf_port_errors_total").increment(1);
                    tries += 1;
                }
            }
        }
        for _ in self.batch.drain(..) {
            self.stats.drop_frame("vf-tx", "vf-ring-full");
        }
    }
}

// The data plane's own ports: not listed among the framework trait's implementors.
#[doc(hidden)]
impl Stage for VfTx {
    type In = Frame;
    type Out = ();
    type Error = std::convert::Infallible;

    fn process(&mut self, frame: Frame, _: &mut Outbox<'_, ()>) -> Result<(), Self::Error> {
        let vf = frame.meta.vf;
        self.batch.push(frame);
        self.flush(vf);
        Ok(())
    }

    fn process_burst(
        &mut self,
        burst: &mut Burst<'_, Frame>,
        _out: &mut Outbox<'_, ()>,
        _failures: &mut Failures<'_, Self::Error>,
    ) {
        // Consecutive frames for one VF go to its port as one batch.
        let mut current = None;
        while let Some(frame) = burst.pop() {
            let vf = frame.meta.vf;
            if current.is_some_and(|c| c != vf) {
                self.flush(current.expect("checked"));
            }
            current = Some(vf);
            self.batch.push(frame);
        }
        if let Some(vf) = current {
            self.flush(vf);
        }
    }
}
