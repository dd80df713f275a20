//! A per-stage live view refreshed in place, like VPP's `show runtime`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use pipewright::controller::Controller;
use pipewright::{Running, Snapshot};

/// Redraws a per-stage table every `every` until `done` says stop.
pub(crate) struct LiveView {
    last: Option<(Instant, Snapshot)>,
    lines_drawn: usize,
    tty: bool,
    /// The controller's latest decisions, newest last.
    decisions: std::collections::VecDeque<String>,
    title: &'static str,
}

impl LiveView {
    pub(crate) fn new() -> Self {
        Self {
            last: None,
            lines_drawn: 0,
            tty: std::io::stdout().is_terminal(),
            decisions: std::collections::VecDeque::new(),
            title: "pipewright demo",
        }
    }

    /// A view whose header says `title`.
    // Only the NIC's subcommands title their view so far.
    #[cfg_attr(not(feature = "nic"), allow(dead_code))]
    pub(crate) fn titled(title: &'static str) -> Self {
        Self {
            title,
            ..Self::new()
        }
    }

    /// Draws one frame from the running pipeline's counters.
    pub(crate) fn frame(&mut self, running: &Running) {
        let now = Instant::now();
        let snap = running.snapshot();
        running.publish_gauges();
        let mut out = String::new();
        out.push_str(&format!(
            "{}  t={:>5.1}s  plan: {}\n",
            self.title,
            running.elapsed().as_secs_f64(),
            running.plan()
        ));
        let since = self
            .last
            .as_ref()
            .map(|(then, prev)| (prev, now.duration_since(*then).as_secs_f64()));
        out.push_str(&snap.table(since));
        if !self.decisions.is_empty() {
            out.push_str("controller decisions (latest last):\n");
            for d in &self.decisions {
                out.push_str(&format!("  {d}\n"));
            }
        }
        let mut stdout = std::io::stdout().lock();
        if self.tty && self.lines_drawn > 0 {
            // Move up over the previous frame and overwrite it.
            let _ = write!(stdout, "\x1b[{}A\x1b[J", self.lines_drawn);
        }
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
        self.lines_drawn = out.lines().count();
        self.last = Some((now, snap));
    }

    /// Draws frames every `every` while `keep_going` returns true; with a controller,
    /// runs one control step per frame and shows its decisions.
    pub(crate) fn run_until(
        &mut self,
        running: &Running,
        every: Duration,
        mut controller: Option<&mut Controller>,
        mut keep_going: impl FnMut() -> bool,
    ) {
        let mut previous = running.snapshot();
        while keep_going() && !running.is_finished() {
            if let Some(c) = controller.as_deref_mut() {
                for d in running.control_step(c, &mut previous, every) {
                    self.decisions
                        .push_back(format!("t={:.1}s {d}", running.elapsed().as_secs_f64()));
                    if self.decisions.len() > 6 {
                        self.decisions.pop_front();
                    }
                }
            }
            self.frame(running);
            std::thread::sleep(every);
        }
    }
}

/// 1234567.0 -> "1.23M".
pub(crate) fn human(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}
