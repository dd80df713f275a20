//! What a started data plane offers: counters, the workers switch, busy polling and
//! stopping.

use super::*;

impl RunningDataPlane {
    /// Drop counters by stage and reason.
    pub fn stats(&self) -> &NicStats {
        &self.stats
    }

    /// Per-stage counters of the pipeline.
    pub fn snapshot(&self) -> pipewright_runtime::Snapshot {
        self.running.snapshot()
    }

    /// The running pipeline (for live views and metrics).
    pub fn running(&self) -> &Running {
        &self.running
    }

    /// Counters of each VF port.
    pub fn port_counters(&self) -> Vec<(u16, PortCounters)> {
        self.ports
            .iter()
            .map(|(vf, p)| (*vf, vf::lock(p).counters()))
            .collect()
    }

    /// The counters of VF `vf`'s port, if the data plane has that VF.
    pub fn port_counters_of(&self, vf: u16) -> Option<PortCounters> {
        self.ports
            .iter()
            .find(|(v, _)| *v == vf)
            .map(|(_, p)| vf::lock(p).counters())
    }

    /// Counters of the AF_XDP underlay (`None` on the UDP underlay).
    pub fn underlay_counters(&self) -> Option<UnderlayCounters> {
        self.xdp.as_ref().map(|(port, counters)| {
            let c = vf::lock(port).counters();
            UnderlayCounters {
                xsk_tx: c.tx_frames,
                xsk_rx: c.rx_frames,
                kernel_path: counters.kernel_path.load(Ordering::Relaxed),
                copied_bytes: c.copied_bytes,
            }
        })
    }

    /// Changes the busy-poll window live (see [`DataPlaneBuilder::busy_poll`]); while
    /// the data plane runs to completion ([`Workers::One`]) the worker polls all its
    /// inputs for that window too (`Running::set_busy_poll`).
    pub fn set_busy_poll(&self, window: Duration) {
        self.activity.set_window(window);
        let workers = *self
            .layout
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.running
            .set_busy_poll(runtime_busy_poll(workers, window));
    }

    /// Frames the underlay handed to the kernel through its tunnel-GSO TAP
    /// ([`UnderlayConfig::tunnel_gso`]; `None` when off).
    pub fn tunnel_gso_frames(&self) -> Option<u64> {
        self.tunnel_frames
            .as_ref()
            .map(|n| n.load(Ordering::Relaxed))
    }

    /// Frames received so far from the VFs and the underlay (the receive sources'
    /// output): the rate a [`WorkersPolicy`] observes.
    pub fn received_frames(&self) -> u64 {
        self.running
            .snapshot()
            .stages
            .iter()
            .filter(|s| is_async_stage(&s.name, false))
            .map(|s| s.items_out)
            .sum()
    }

    /// The [`Workers`] choice in force.
    pub fn workers(&self) -> Workers {
        *self
            .layout
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Whether [`set_workers`](Self::set_workers) can change the choice (the data
    /// plane was started [`switchable`](DataPlaneBuilder::switchable)).
    pub fn is_switchable(&self) -> bool {
        self.layout.switchable
    }

    /// Switches between running to completion on one worker ([`Workers::One`], with
    /// the worker busy-polling for the data plane's window) and a worker per side
    /// ([`Workers::Two`]) while the data plane runs: the sync stages move at their
    /// next burst boundary, nothing in flight is lost or reordered. Needs a data plane
    /// started [`switchable`](DataPlaneBuilder::switchable).
    pub fn set_workers(&self, workers: Workers) -> Result<(), SwitchError> {
        if !self.layout.switchable {
            return Err(SwitchError::Fixed);
        }
        let mut current = self
            .layout
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let placement = layout::place(&self.layout.roles, workers, true);
        let now = self.running.snapshot();
        for ((name, role), to) in self
            .layout
            .names
            .iter()
            .zip(&self.layout.roles)
            .zip(placement)
        {
            let from = now.stage(name).map_or(to, |s| s.worker);
            if role.is_async || from == to {
                continue;
            }
            let decision = pipewright_runtime::controller::Decision::Move {
                stage: name.clone(),
                from,
                to,
                why: pipewright_runtime::controller::Reason::Balance,
            };
            self.running
                .apply(&decision)
                .map_err(|source| SwitchError::Move {
                    stage: name.clone(),
                    source,
                })?;
        }
        *current = workers;
        self.running
            .set_busy_poll(runtime_busy_poll(workers, self.activity.window_duration()));
        Ok(())
    }

    /// The busy-poll window in force.
    pub fn busy_poll(&self) -> Duration {
        self.activity.window_duration()
    }

    /// A handle that stops the data plane from another thread (a signal handler).
    pub fn stopper(&self) -> Stop {
        self.stop.clone()
    }

    /// Stops the sources, lets what is in flight through, and returns the final
    /// report (after at most `deadline`, abandoning and counting what is left).
    pub fn stop_within(self, deadline: Duration) -> Result<Report, RunError> {
        self.stop.stop();
        self.running.shutdown(deadline)
    }

    /// [`RunningDataPlane::stop_within`] with two seconds.
    pub fn stop(self) -> Result<Report, RunError> {
        self.stop_within(Duration::from_secs(2))
    }
}
