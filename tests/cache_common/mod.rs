//! Shared by the cache gateway tests: start a gateway process, a minimal blocking NBD
//! client (newstyle, NBD_OPT_GO, simple replies), tool checks.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub(crate) const EXE: &str = env!("CARGO_BIN_EXE_pipewright");

/// Reads a gateway's stdout until it says where it listens; returns that address and
/// keeps draining its stdout (so the gateway never blocks on a full pipe).
pub(crate) fn listening_address(child: &mut Child) -> String {
    let mut out = BufReader::new(child.stdout.take().expect("stdout piped"));
    let mut line = String::new();
    let addr = loop {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("gateway exited before listening: {:?}", child.wait());
        }
        if let Some(rest) = line
            .trim()
            .strip_prefix("pipewright cache gateway: listening on nbd://")
        {
            break rest.to_string();
        }
    };
    std::thread::spawn(move || {
        let mut sink = String::new();
        while out.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    addr
}

pub(crate) struct Gateway {
    pub child: Child,
    pub addr: String,
    pub dir: PathBuf,
}

impl Gateway {
    /// Starts `pipewright cache gateway` on an ephemeral port over `dir/volumes`, cache
    /// file `dir/cache`, with extra args and environment.
    pub(crate) fn start(dir: &Path, size: &str, extra: &[&str], env: &[(&str, String)]) -> Gateway {
        let mut cmd = Command::new(EXE);
        cmd.args([
            "cache",
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--size",
            size,
        ])
        .arg("--backend")
        .arg(dir.join("volumes"))
        .arg("--cache-file")
        .arg(dir.join("cache"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the gateway");
        let addr = listening_address(&mut child);
        Gateway {
            child,
            addr,
            dir: dir.to_path_buf(),
        }
    }

    pub(crate) fn uri(&self, export: &str) -> String {
        format!("nbd://{}/{}", self.addr, export)
    }

    /// SIGTERM and wait: the gateway flushes before it exits.
    pub(crate) fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "gateway exited with {status}");
    }

    pub(crate) fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself (a crash point); returns whether it
    /// died of a signal.
    pub(crate) fn wait_crash(mut self) -> bool {
        let status = self.child.wait().unwrap();
        !status.success()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal NBD client.
pub(crate) struct Client {
    sock: TcpStream,
    cookie: u64,
    pub size: u64,
}

#[derive(Debug)]
pub(crate) enum ClientError {
    Io(std::io::Error),
    Errno(u32),
    Refused(u32),
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e)
    }
}

impl Client {
    pub(crate) fn connect(addr: &str, export: &str) -> Result<Client, ClientError> {
        let mut sock = TcpStream::connect(addr)?;
        sock.set_nodelay(true)?;
        let mut hello = [0u8; 18];
        sock.read_exact(&mut hello)?;
        assert_eq!(&hello[..8], b"NBDMAGIC");
        sock.write_all(&3u32.to_be_bytes())?; // fixed newstyle, no zeroes
        let mut opt = Vec::new();
        opt.extend_from_slice(b"IHAVEOPT");
        opt.extend_from_slice(&7u32.to_be_bytes()); // NBD_OPT_GO
        let data_len = 4 + export.len() + 2;
        opt.extend_from_slice(&(data_len as u32).to_be_bytes());
        opt.extend_from_slice(&(export.len() as u32).to_be_bytes());
        opt.extend_from_slice(export.as_bytes());
        opt.extend_from_slice(&0u16.to_be_bytes());
        sock.write_all(&opt)?;
        let mut size = 0;
        loop {
            let mut h = [0u8; 20];
            sock.read_exact(&mut h)?;
            let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
            let mut d = vec![0u8; len];
            sock.read_exact(&mut d)?;
            match kind {
                1 => break,
                3 if u16::from_be_bytes([d[0], d[1]]) == 0 => {
                    size = u64::from_be_bytes(d[2..10].try_into().unwrap())
                }
                3 => {}
                k if k & (1 << 31) != 0 => return Err(ClientError::Refused(k)),
                _ => {}
            }
        }
        Ok(Client {
            sock,
            cookie: 0,
            size,
        })
    }

    fn request(
        &mut self,
        kind: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        self.cookie += 1;
        let mut r = Vec::with_capacity(28 + payload.len());
        r.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&kind.to_be_bytes());
        r.extend_from_slice(&self.cookie.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        r.extend_from_slice(payload);
        self.sock.write_all(&r)?;
        let mut h = [0u8; 16];
        self.sock.read_exact(&mut h)?;
        assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), 0x6744_6698);
        let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
        assert_eq!(
            u64::from_be_bytes(h[8..16].try_into().unwrap()),
            self.cookie
        );
        if err != 0 {
            return Err(ClientError::Errno(err));
        }
        let mut d = vec![0u8; if kind == 0 { len as usize } else { 0 }];
        self.sock.read_exact(&mut d)?;
        Ok(d)
    }

    pub(crate) fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, ClientError> {
        self.request(0, offset, len, &[])
    }

    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        self.request(1, offset, data.len() as u32, data).map(drop)
    }

    pub(crate) fn flush(&mut self) -> Result<(), ClientError> {
        self.request(3, 0, 0, &[]).map(drop)
    }

    /// Sends raw bytes (malformed-request tests).
    pub(crate) fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.sock.write_all(bytes)
    }

    /// Reads one reply header: (error, cookie), or an I/O error if the server closed.
    pub(crate) fn reply_header(&mut self) -> std::io::Result<(u32, u64)> {
        let mut h = [0u8; 16];
        self.sock.read_exact(&mut h)?;
        Ok((
            u32::from_be_bytes(h[4..8].try_into().unwrap()),
            u64::from_be_bytes(h[8..16].try_into().unwrap()),
        ))
    }
}

pub(crate) fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Writes a file of `len` pseudo-random bytes from `seed`.
pub(crate) fn random_file(path: &Path, len: usize, seed: u64) {
    let mut x = seed | 1;
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    buf.truncate(len);
    std::fs::write(path, buf).unwrap();
}
