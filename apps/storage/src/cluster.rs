//! A local cluster of real node processes on loopback (`pipewright storage cluster`
//! and the cluster tests).
//!
//! Each node runs as `EXE storage node --id N --listen 127.0.0.1:PORT --data DIR/node-N
//! --peers DIR/peers.toml`, its output appended to `DIR/node-N.log`. Children are
//! stopped with SIGTERM on [`LocalCluster::stop`], killed with SIGKILL on drop, and
//! (Linux) get SIGKILL if the thread that started them exits first, so a crashed test
//! leaves no nodes behind.
//!
//! ```no_run
//! use pipewright_storage::cluster::LocalCluster;
//! use pipewright_storage::NodeId;
//!
//! let mut cluster = LocalCluster::start("target/debug/pipewright".as_ref(), "/tmp/c".as_ref(), 3, None, &[])?;
//! println!("{}", cluster.peers().to_toml());
//! cluster.kill(NodeId(2))?; // kill -9
//! cluster.restart(NodeId(2))?;
//! cluster.stop();
//! # Ok::<(), std::io::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::peers::Peers;
use crate::types::NodeId;

/// Node processes of one cluster.
#[derive(Debug)]
pub struct LocalCluster {
    exe: PathBuf,
    dir: PathBuf,
    peers: Peers,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    children: BTreeMap<NodeId, Child>,
}

fn free_port(ip: IpAddr) -> io::Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

impl LocalCluster {
    /// Start nodes `1..=nodes` with data under `dir`, on ports `base_port + id` (or
    /// free ports), each with `extra` node arguments; returns once all accept
    /// connections.
    pub fn start(
        exe: &Path,
        dir: &Path,
        nodes: u32,
        base_port: Option<u16>,
        extra: &[String],
    ) -> io::Result<Self> {
        Self::start_with_env(exe, dir, nodes, base_port, extra, &[])
    }

    /// [`start`](Self::start) with environment variables for every node process
    /// (e.g. `PIPEWRIGHT_STORAGE_NET_FAULTS` in fault tests, with the feature `faults`), also
    /// on restarts.
    pub fn start_with_env(
        exe: &Path,
        dir: &Path,
        nodes: u32,
        base_port: Option<u16>,
        extra: &[String],
        env: &[(String, String)],
    ) -> io::Result<Self> {
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut addrs = Vec::new();
        for id in 1..=nodes {
            let port = match base_port {
                Some(base) => base + id as u16,
                None => free_port(localhost)?,
            };
            addrs.push(SocketAddr::new(localhost, port));
        }
        Self::start_at(exe, dir, &addrs, extra, env)
    }

    /// Start node `i` (from 1) at `addrs[i - 1]`, a port of 0 meaning a free one; like
    /// [`start_with_env`](Self::start_with_env) otherwise. Nodes on addresses of their
    /// own (e.g. `127.77.0.1`, `127.77.0.2`, … on loopback) also send from them, so a
    /// firewall rule on one address cuts one node off (a network partition).
    pub fn start_at(
        exe: &Path,
        dir: &Path,
        addrs: &[SocketAddr],
        extra: &[String],
        env: &[(String, String)],
    ) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut map = BTreeMap::new();
        for (id, addr) in (1..).zip(addrs) {
            let port = match addr.port() {
                0 => free_port(addr.ip())?,
                port => port,
            };
            map.insert(NodeId(id), SocketAddr::new(addr.ip(), port));
        }
        // A key of its own: its nodes refuse connections signed otherwise.
        let peers = Peers::new(map).with_key(crate::auth::random_passphrase()?);
        let saved = peers
            .save(dir.join("peers.toml"))
            .and_then(|()| peers.for_clients().save(dir.join("clients.toml")));
        saved.map_err(|e| io::Error::other(e.to_string()))?;
        let mut cluster = Self {
            exe: exe.to_path_buf(),
            dir: dir.to_path_buf(),
            peers,
            extra: extra.to_vec(),
            env: env.to_vec(),
            children: BTreeMap::new(),
        };
        for id in cluster.peers.ids() {
            cluster.spawn(id)?;
        }
        for id in cluster.peers.ids() {
            cluster.wait_ready(id, Duration::from_secs(20))?;
        }
        Ok(cluster)
    }

    /// The cluster's peers.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// The nodes' peers file (with the cluster key).
    pub fn peers_path(&self) -> PathBuf {
        self.dir.join("peers.toml")
    }

    /// The clients' peers file (the same nodes, only the client key: see
    /// [`Peers::for_clients`]).
    pub fn client_peers_path(&self) -> PathBuf {
        self.dir.join("clients.toml")
    }

    /// A node's data directory.
    pub fn data_dir(&self, node: NodeId) -> PathBuf {
        self.dir.join(format!("node-{}", node.0))
    }

    fn spawn(&mut self, node: NodeId) -> io::Result<()> {
        self.spawn_with(node, &[])
    }

    fn spawn_with(&mut self, node: NodeId, more: &[String]) -> io::Result<()> {
        let addr = self.peers.addr(node).expect("a node of the cluster");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{}.log", node.0)))?;
        let mut cmd = Command::new(&self.exe);
        cmd.args(["storage", "node", "--id", &node.0.to_string()])
            .args(["--listen", &addr.to_string()])
            .arg("--data")
            .arg(self.data_dir(node))
            .arg("--peers")
            .arg(self.peers_path())
            .args(&self.extra)
            .args(more)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        kill_with_parent(&mut cmd);
        self.children.insert(node, cmd.spawn()?);
        Ok(())
    }

    /// Wait until `node` accepts connections.
    pub fn wait_ready(&mut self, node: NodeId, timeout: Duration) -> io::Result<()> {
        let addr = self.peers.addr(node).expect("a node of the cluster");
        let start = Instant::now();
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.children.get_mut(&node) {
                if let Some(status) = child.try_wait()? {
                    return Err(io::Error::other(format!(
                        "node {} exited with {status}; see {}",
                        node.0,
                        self.dir.join(format!("node-{}.log", node.0)).display()
                    )));
                }
            }
            if start.elapsed() > timeout {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("node {} is not listening on {addr}", node.0),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id of `node`'s process, if it runs (for tests that signal it).
    pub fn pid(&self, node: NodeId) -> Option<u32> {
        self.children.get(&node).map(|c| c.id())
    }

    /// `kill -9` a node and reap it.
    pub fn kill(&mut self, node: NodeId) -> io::Result<()> {
        if let Some(mut child) = self.children.remove(&node) {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Start a node again (after [`kill`](Self::kill)) and wait until it listens.
    pub fn restart(&mut self, node: NodeId) -> io::Result<()> {
        self.kill(node)?;
        self.spawn(node)?;
        self.wait_ready(node, Duration::from_secs(20))
    }

    /// Restart a node with extra arguments for this run only (e.g. a crash point).
    pub fn restart_with(&mut self, node: NodeId, args: &[String]) -> io::Result<()> {
        self.kill(node)?;
        self.spawn_with(node, args)?;
        self.wait_ready(node, Duration::from_secs(20))
    }

    /// Wait up to `timeout` for `node` to exit by itself; true if it did (and was
    /// reaped).
    pub fn wait_exit(&mut self, node: NodeId, timeout: Duration) -> io::Result<bool> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(child) = self.children.get_mut(&node) {
                if child.try_wait()?.is_some() {
                    self.children.remove(&node);
                    return Ok(true);
                }
            } else {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(false)
    }

    /// Whether every node is still running.
    pub fn all_running(&mut self) -> bool {
        self.children
            .values_mut()
            .all(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Block until SIGINT (Ctrl-C) or SIGTERM arrives, or a node exits on its own
    /// (reported as an error).
    pub fn wait_for_signal(&mut self) -> io::Result<()> {
        let rt = crate::io_runtime(1)?;
        rt.block_on(async {
            let signal = crate::shutdown_signal();
            tokio::pin!(signal);
            loop {
                tokio::select! {
                    _ = &mut signal => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        for (id, child) in &mut self.children {
                            if let Some(status) = child.try_wait()? {
                                return Err(io::Error::other(format!(
                                    "node {} exited with {status}", id.0
                                )));
                            }
                        }
                    }
                }
            }
        })
    }

    /// Stop every node with SIGTERM (SIGKILL after 5 s).
    pub fn stop(&mut self) {
        for child in self.children.values() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, mut child) in std::mem::take(&mut self.children) {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for (_, mut child) in std::mem::take(&mut self.children) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Makes the child get SIGKILL when this process dies (`PR_SET_PDEATHSIG`), so a
/// crashed test leaves no node processes behind.
#[allow(unsafe_code)]
fn kill_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec; it only calls prctl(2), which is
    // async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from));
    }
}
