//! The peer, `postgres-2pc`: PostgreSQL servers (the Debian package's binaries) doing
//! the same work with two-phase commit. Each server runs from its own temporary data
//! directory on loopback (TCP), `fsync=on`, `synchronous_commit=on`, the default
//! `wal_sync_method` (`fdatasync` on Linux). Every coordinator (a thread with one
//! connection per server) owns 4 "page" rows (`id`, `version`, 8 KiB `bytea` of
//! incompressible data, stored uncompressed) on every server and updates one of them on
//! every server inside one distributed transaction: `BEGIN; UPDATE; PREPARE
//! TRANSACTION` on each server, then `COMMIT PREPARED` on each (`ROLLBACK PREPARED`
//! if any prepare failed). The client's answer is the end of the commit phase.
//!
//! By default a coordinator talks to the servers of a phase in parallel (a standard
//! 2PC coordinator); `PIPEWRIGHT_COMMIT_CHAIN_PG=serial` goes server by server.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::{payload, Measured, PAGES_PER_COORDINATOR};

mod server;
pub use server::{binaries, stop_all};
use server::{is_root, Server};

/// Prepares that failed (the first few are printed).
static FAILED_PREPARES: AtomicU64 = AtomicU64::new(0);

/// `n` servers with the page table set up for `concurrency` coordinators.
pub struct Peer {
    servers: Vec<Server>,
    parallel: bool,
}

impl Peer {
    /// Start `n` servers under `base` (all at once), with `concurrency * 4` pages of
    /// `page_size` bytes each.
    pub fn start(
        bin: &Path,
        base: &Path,
        n: usize,
        concurrency: usize,
        page_size: usize,
    ) -> Result<Self, String> {
        std::fs::create_dir_all(base).map_err(|e| format!("{}: {e}", base.display()))?;
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(base)
                .status()
                .map_err(|e| format!("chown: {e}"))?;
            if !ok.success() {
                return Err("chown to the postgres user failed".into());
            }
        }
        let ports = (0..n)
            .map(|_| super::free_port())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let started: Vec<Result<Server, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = ports
                .iter()
                .map(|&port| s.spawn(move || Server::start(bin, base, port)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("start panicked".into())))
                .collect()
        });
        let servers = started.into_iter().collect::<Result<Vec<_>, _>>()?;
        for s in &servers {
            let mut c = s.connect()?;
            c.batch_execute(
                "CREATE TABLE pages (id int PRIMARY KEY, version bigint NOT NULL, data bytea NOT NULL);
                 ALTER TABLE pages ALTER COLUMN data SET STORAGE EXTERNAL",
            )
            .map_err(|e| e.to_string())?;
            for id in 0..concurrency * PAGES_PER_COORDINATOR {
                let data = payload(id, page_size);
                c.execute(
                    "INSERT INTO pages VALUES ($1, 0, $2)",
                    &[&(id as i32), &data],
                )
                .map_err(|e| e.to_string())?;
            }
        }
        let parallel = std::env::var("PIPEWRIGHT_COMMIT_CHAIN_PG").as_deref() != Ok("serial");
        Ok(Self { servers, parallel })
    }

    /// How the coordinator drives a phase.
    pub fn mode(&self) -> &'static str {
        if self.parallel {
            "parallel"
        } else {
            "serial"
        }
    }

    /// Run `concurrency` coordinator threads for `warmup` + `window`; measure the
    /// `window`.
    pub fn run(
        &self,
        concurrency: usize,
        warmup: Duration,
        window: Duration,
        page_size: usize,
    ) -> Result<Measured, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let measuring = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3).expect("histogram")));
        let parallel = self.parallel;
        let mut threads = Vec::new();
        for t in 0..concurrency {
            let mut conns = Vec::new();
            for s in &self.servers {
                let mut client = s.connect()?;
                let update = client
                    .prepare("UPDATE pages SET data = $1, version = version + 1 WHERE id = $2")
                    .map_err(|e| e.to_string())?;
                conns.push(Conn { client, update });
            }
            let (stop, measuring) = (stop.clone(), measuring.clone());
            let (committed, hist) = (committed.clone(), hist.clone());
            let gid_base = gid_seed();
            threads.push(std::thread::spawn(move || -> Result<(), String> {
                let mut data = payload(t, page_size);
                let mut local = Histogram::<u64>::new(3).expect("histogram");
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    // Each coordinator works its own pages: no conflicts, like ours.
                    let page = (t * PAGES_PER_COORDINATOR + n % PAGES_PER_COORDINATOR) as i32;
                    data[..8].copy_from_slice(&(n as u64).to_le_bytes());
                    let counted = measuring.load(Ordering::Relaxed);
                    let start = Instant::now();
                    let gid = format!("b{gid_base:x}t{t}x{n}");
                    if transaction(&mut conns, parallel, page, &data, &gid)?
                        && counted
                        && !stop.load(Ordering::Relaxed)
                    {
                        committed.fetch_add(1, Ordering::Relaxed);
                        let _ = local.record(start.elapsed().as_micros().max(1) as u64);
                    }
                    n += 1;
                }
                hist.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .add(&local)
                    .ok();
                Ok(())
            }));
        }
        std::thread::sleep(warmup);
        measuring.store(true, Ordering::Relaxed);
        let start = Instant::now();
        std::thread::sleep(window);
        stop.store(true, Ordering::Relaxed);
        let secs = start.elapsed().as_secs_f64();
        for t in threads {
            t.join()
                .map_err(|_| "coordinator thread panicked".to_string())??;
        }
        let h = hist.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Measured::from(committed.load(Ordering::Relaxed), secs, &h))
    }
}

/// Distinct transaction ids across runs against the same servers.
fn gid_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos() as u64 ^ ((std::process::id() as u64) << 32)
}

struct Conn {
    client: postgres::Client,
    update: postgres::Statement,
}

/// `f(i, conn)` on every connection: in parallel (scoped threads; the first inline)
/// or one after the other.
fn on_all<T: Send>(
    conns: &mut [Conn],
    parallel: bool,
    f: impl Fn(usize, &mut Conn) -> T + Sync,
) -> Vec<T> {
    if !parallel {
        return conns.iter_mut().enumerate().map(|(i, c)| f(i, c)).collect();
    }
    let f = &f;
    std::thread::scope(|s| {
        let (first, rest) = conns.split_first_mut().expect("at least one server");
        let handles: Vec<_> = rest
            .iter_mut()
            .enumerate()
            .map(|(i, c)| s.spawn(move || f(i + 1, c)))
            .collect();
        let mut out = vec![f(0, first)];
        out.extend(
            handles
                .into_iter()
                .map(|h| h.join().expect("postgres worker thread")),
        );
        out
    })
}

/// One distributed transaction: the page row `page` gets new contents on every
/// server, or nothing changes anywhere. `Ok(false)` if it aborted.
fn transaction(
    conns: &mut [Conn],
    parallel: bool,
    page: i32,
    data: &[u8],
    gid: &str,
) -> Result<bool, String> {
    let prepared = on_all(conns, parallel, |_, c| -> Result<(), String> {
        let r = (|| {
            c.client.batch_execute("BEGIN")?;
            if c.client.execute(&c.update, &[&data, &page])? != 1 {
                return Ok(false);
            }
            c.client
                .batch_execute(&format!("PREPARE TRANSACTION '{gid}'"))?;
            Ok::<_, postgres::Error>(true)
        })();
        match r {
            Ok(true) => Ok(()),
            Ok(false) => {
                let _ = c.client.batch_execute("ROLLBACK");
                Err(format!("page {page} missing"))
            }
            Err(e) => {
                let _ = c.client.batch_execute("ROLLBACK");
                Err(e.to_string())
            }
        }
    });
    let ok = prepared.iter().all(Result::is_ok);
    if let Some(Err(e)) = prepared.iter().find(|r| r.is_err()) {
        if conns.iter().any(|c| c.client.is_closed()) {
            return Err(format!("a server closed the connection: {e}"));
        }
        if FAILED_PREPARES.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("commit_chain:   postgres-2pc: prepare failed: {e}");
        }
    }
    let verb = if ok {
        "COMMIT PREPARED"
    } else {
        "ROLLBACK PREPARED"
    };
    let prepared = &prepared;
    let finished = on_all(conns, parallel, |i, c| {
        if prepared[i].is_err() {
            return Ok(());
        }
        c.client
            .batch_execute(&format!("{verb} '{gid}'"))
            .map_err(|e| format!("{verb}: {e}"))
    });
    finished.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(ok)
}

/// Makes the bench binary a PostgreSQL two-phase-commit coordinator process, for
/// `decider-down-availability` (the peer's coordinator, killed with `kill -9`):
/// `<port>,<port>,…/<concurrency>/<page size>`.
pub const COORDINATOR_ENV: &str = "PIPEWRIGHT_COMMIT_CHAIN_PG_COORDINATOR";

/// What a lock wait may take before the statement fails: the same 1 s our client
/// gives a transaction in `decider-down-availability`.
const LOCK_TIMEOUT: &str = "SET lock_timeout = '1s'";

/// Connections to `ports` (one per server) for one coordinator thread, with
/// [`LOCK_TIMEOUT`].
fn coordinator_conns(ports: &[u16]) -> Result<Vec<Conn>, String> {
    ports
        .iter()
        .map(|&port| {
            let mut client = Server::connect_to(port)?;
            client
                .batch_execute(LOCK_TIMEOUT)
                .map_err(|e| e.to_string())?;
            let update = client
                .prepare("UPDATE pages SET data = $1, version = version + 1 WHERE id = $2")
                .map_err(|e| e.to_string())?;
            Ok(Conn { client, update })
        })
        .collect()
}

/// The coordinator process ([`COORDINATOR_ENV`]): `concurrency` coordinator threads
/// run distributed transactions on their pages back to back, as in
/// [`Peer::run`], until the process is killed. Prints `ready` once every
/// connection is up.
pub fn coordinator_process(spec: &str) -> Result<(), String> {
    let bad =
        || format!("{COORDINATOR_ENV}={spec}: expected <port>,<port>,…/<concurrency>/<page size>");
    let mut parts = spec.split('/');
    let ports: Vec<u16> = parts
        .next()
        .ok_or_else(bad)?
        .split(',')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let concurrency: usize = parts.next().and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    let page_size: usize = parts.next().and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    let mut all = Vec::new();
    for _ in 0..concurrency {
        all.push(coordinator_conns(&ports)?);
    }
    let threads: Vec<_> = all
        .into_iter()
        .enumerate()
        .map(|(t, mut conns)| {
            std::thread::spawn(move || -> Result<(), String> {
                let gid_base = gid_seed();
                let mut data = payload(t, page_size);
                for n in 0usize.. {
                    let page = (t * PAGES_PER_COORDINATOR + n % PAGES_PER_COORDINATOR) as i32;
                    data[..8].copy_from_slice(&(n as u64).to_le_bytes());
                    transaction(
                        &mut conns,
                        true,
                        page,
                        &data,
                        &format!("k{gid_base:x}t{t}x{n}"),
                    )?;
                }
                Ok(())
            })
        })
        .collect();
    println!("ready");
    for t in threads {
        t.join()
            .map_err(|_| "coordinator thread panicked".to_string())??;
    }
    Ok(())
}

impl Peer {
    /// `decider-down-availability`'s peer case: the coordinator (a process of its own,
    /// [`coordinator_process`]) runs `concurrency` coordinator threads for `warmup`
    /// and is killed (`kill -9`) with transactions in flight; the transactions it had
    /// prepared stay prepared on the servers and hold their rows' locks. For `outage`,
    /// `concurrency` fresh coordinators (this process) write the same pages, each lock
    /// wait failing after 1 s (as our client's timeout); what committed of what they
    /// attempted is counted. Then the coordinator "restarts": the transactions left
    /// prepared are rolled back (presumed abort; nothing reads the pages afterwards).
    pub fn coordinator_down(
        &self,
        concurrency: usize,
        warmup: Duration,
        outage: Duration,
        page_size: usize,
    ) -> Result<(u64, u64, usize), String> {
        use std::io::BufRead;
        let ports: Vec<u16> = self.servers.iter().map(|s| s.port).collect();
        let spec = format!(
            "{}/{concurrency}/{page_size}",
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .env(COORDINATOR_ENV, &spec)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the coordinator process: {e}"))?;
        let mut line = String::new();
        let stdout = child.stdout.take().ok_or("no coordinator stdout")?;
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the coordinator process did not start".into());
        }
        // The fresh coordinators connect before the kill: the outage counts
        // transactions only.
        let mut all = Vec::new();
        for _ in 0..concurrency {
            all.push(coordinator_conns(&ports)?);
        }
        std::thread::sleep(warmup);
        child
            .kill()
            .map_err(|e| format!("killing the coordinator: {e}"))?;
        let _ = child.wait();
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let attempted = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = all
            .into_iter()
            .enumerate()
            .map(|(t, mut conns)| {
                let (stop, committed, attempted) =
                    (stop.clone(), committed.clone(), attempted.clone());
                std::thread::spawn(move || -> Result<(), String> {
                    let gid_base = gid_seed();
                    let mut data = payload(t, page_size);
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let page = (t * PAGES_PER_COORDINATOR + n % PAGES_PER_COORDINATOR) as i32;
                        data[..8].copy_from_slice(&(n as u64).to_le_bytes());
                        let ok = transaction(
                            &mut conns,
                            true,
                            page,
                            &data,
                            &format!("d{gid_base:x}t{t}x{n}"),
                        )?;
                        // Counted only when the whole attempt ran during the outage.
                        if !stop.load(Ordering::Relaxed) {
                            attempted.fetch_add(1, Ordering::Relaxed);
                            if ok {
                                committed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        n += 1;
                    }
                    Ok(())
                })
            })
            .collect();
        std::thread::sleep(outage);
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join()
                .map_err(|_| "coordinator thread panicked".to_string())??;
        }
        // The restarted coordinator settles what the killed one left prepared.
        let mut in_doubt = 0;
        for s in &self.servers {
            let mut c = s.connect()?;
            let gids: Vec<String> = c
                .query("SELECT gid FROM pg_prepared_xacts", &[])
                .map_err(|e| e.to_string())?
                .iter()
                .map(|r| r.get(0))
                .collect();
            in_doubt += gids.len();
            for gid in gids {
                c.batch_execute(&format!("ROLLBACK PREPARED '{gid}'"))
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok((
            committed.load(Ordering::Relaxed),
            attempted.load(Ordering::Relaxed),
            in_doubt,
        ))
    }
}
