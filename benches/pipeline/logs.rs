//! The newcomer's log pipeline, as plain functions every contender calls: generate a
//! log file, parse a line (CPU-bound, typed errors), classify, aggregate per minute.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::Path;

/// One parsed access-log line.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub minute: u64,
    pub status: u16,
    pub bytes: u64,
    pub latency_us: u64,
    pub client: u32,
    pub route: u64,
    pub query: u64,
    pub agent: Agent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Agent {
    Browser,
    Bot,
    Cli,
    Other,
}

/// Why a line is not a log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("bad timestamp")]
    Time,
    #[error("bad address")]
    Address,
    #[error("bad number in {0}")]
    Number(&'static str),
    #[error("not UTF-8, or too long")]
    Encoding,
}

/// Writes `lines` lines, 1% malformed, to `path` (deterministic).
pub(crate) fn generate(path: &Path, lines: usize) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let agents = [
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "curl/8.5.0",
        "python-requests/2.31",
    ];
    let mut line = String::new();
    for i in 0..lines {
        let r = next();
        line.clear();
        let secs = 1_764_583_200 + (i as u64 / 50);
        let (d, s) = (secs / 86_400, secs % 86_400);
        let _ = write!(
            line,
            "2025-12-{:02}T{:02}:{:02}:{:02}Z 10.{}.{}.{} {} /api/v1/items/{}?page={}&q=a%20b {} {} {}.{}ms \"{}\"",
            1 + d % 28,
            s / 3600,
            (s / 60) % 60,
            s % 60,
            r % 256,
            (r >> 8) % 256,
            (r >> 16) % 256,
            ["GET", "POST", "PUT"][(r >> 24) as usize % 3],
            (r >> 28) % 10_000,
            (r >> 40) % 20,
            [200, 200, 200, 201, 204, 301, 404, 500, 503][(r >> 44) as usize % 9],
            (r >> 48) % 100_000,
            (r >> 52) % 400,
            (r >> 56) % 10,
            agents[(r >> 60) as usize % 4],
        );
        if r % 100 == 0 {
            line.truncate(line.len() / 3); // 1% malformed
        }
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Calls `f` with each block of whole lines of `path` (64 KiB reads, cut after the
/// last `\n`), as pipewright's `LineBlocks` source reads it.
pub(crate) fn for_each_block(path: &Path, mut f: impl FnMut(Vec<u8>)) {
    let mut file = std::fs::File::open(path).expect("log file");
    let mut carry = Vec::new();
    loop {
        let mut buf = Vec::with_capacity(carry.len() + BLOCK);
        buf.append(&mut carry);
        let read = (&mut file)
            .take(BLOCK as u64)
            .read_to_end(&mut buf)
            .expect("readable log file");
        if read == 0 {
            if !buf.is_empty() {
                f(buf);
            }
            return;
        }
        match memchr::memrchr(b'\n', &buf) {
            Some(end) => {
                carry = buf.split_off(end + 1);
                f(buf);
            }
            None => carry = buf,
        }
    }
}

const BLOCK: usize = 64 * 1024;

/// The lines of a block, as text (`Err` for a line that is not UTF-8).
pub(crate) fn lines(block: &[u8]) -> impl Iterator<Item = Result<&str, ParseError>> {
    block.split_inclusive(|&b| b == b'\n').map(|raw| {
        let line = raw.strip_suffix(b"\n").unwrap_or(raw);
        std::str::from_utf8(line).map_err(|_| ParseError::Encoding)
    })
}

/// Parses every line of `path`, block by block: what a plain loop does.
pub(crate) fn for_each_parsed(path: &Path, mut f: impl FnMut(Result<Entry, ParseError>)) {
    for_each_block(path, |block| {
        for line in lines(&block) {
            f(line.and_then(parse));
        }
    });
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn days_from_civil(y: i64, m: u64, d: u64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy as i64;
    era * 146_097 + doe - 719_468
}

fn num(s: &str, what: &'static str) -> Result<u64, ParseError> {
    s.parse().map_err(|_| ParseError::Number(what))
}

/// Parses one line: timestamp, address, method, URL (percent-decoded and normalised
/// into a route id), status, bytes, latency and user agent class.
pub(crate) fn parse(line: &str) -> Result<Entry, ParseError> {
    let mut fields = line.splitn(7, ' ');
    let time = fields.next().ok_or(ParseError::Missing("time"))?;
    let addr = fields.next().ok_or(ParseError::Missing("address"))?;
    let _method = fields.next().ok_or(ParseError::Missing("method"))?;
    let url = fields.next().ok_or(ParseError::Missing("url"))?;
    let status = fields.next().ok_or(ParseError::Missing("status"))?;
    let bytes = fields.next().ok_or(ParseError::Missing("bytes"))?;
    let rest = fields.next().ok_or(ParseError::Missing("latency"))?;
    let (latency, agent) = rest.split_once(' ').ok_or(ParseError::Missing("agent"))?;
    if time.len() != 20 || !time.ends_with('Z') {
        return Err(ParseError::Time);
    }
    let t = |a: usize, b: usize| num(&time[a..b], "time");
    let days = days_from_civil(t(0, 4)? as i64, t(5, 7)?, t(8, 10)?);
    let secs = days as u64 * 86_400 + t(11, 13)? * 3600 + t(14, 16)? * 60 + t(17, 19)?;
    let client: std::net::Ipv4Addr = addr.parse().map_err(|_| ParseError::Address)?;
    // The route: the path with ids replaced, percent-decoded query dropped.
    let path = url.split('?').next().unwrap_or(url);
    let mut decoded = Vec::with_capacity(url.len());
    let mut bytes_in = url.bytes();
    while let Some(b) = bytes_in.next() {
        if b == b'%' {
            let hi = bytes_in.next().ok_or(ParseError::Missing("escape"))?;
            let lo = bytes_in.next().ok_or(ParseError::Missing("escape"))?;
            let hex = |c: u8| (c as char).to_digit(16).ok_or(ParseError::Number("escape"));
            decoded.push((hex(hi)? * 16 + hex(lo)?) as u8);
        } else {
            decoded.push(b);
        }
    }
    let route = path
        .split('/')
        .map(|seg| {
            if seg.bytes().all(|c| c.is_ascii_digit()) && !seg.is_empty() {
                ":id"
            } else {
                seg
            }
        })
        .fold(0u64, |h, seg| h.rotate_left(7) ^ fnv(seg.as_bytes()));
    let latency = latency
        .strip_suffix("ms")
        .ok_or(ParseError::Number("latency"))?;
    let (ms, frac) = latency
        .split_once('.')
        .ok_or(ParseError::Number("latency"))?;
    let agent = agent.trim_matches('"');
    let agent = if agent.contains("bot") || agent.contains("Bot") {
        Agent::Bot
    } else if agent.starts_with("Mozilla") {
        Agent::Browser
    } else if agent.starts_with("curl") || agent.starts_with("Wget") {
        Agent::Cli
    } else {
        Agent::Other
    };
    Ok(Entry {
        minute: secs / 60,
        status: num(status, "status")? as u16,
        bytes: num(bytes, "bytes")?,
        latency_us: num(ms, "latency")? * 1000 + num(frac, "latency")? * 100,
        client: u32::from(client),
        route,
        query: fnv(&decoded),
        agent,
    })
}

/// Status class: 0 for 2xx, 1 for 3xx, 2 for 4xx, 3 for 5xx.
pub(crate) fn class(entry: &Entry) -> usize {
    (entry.status / 100).clamp(2, 5) as usize - 2
}

/// Per-minute, per-class totals.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub minutes: HashMap<(u64, usize), (u64, u64, u64)>,
    pub malformed: u64,
}

impl Summary {
    pub(crate) fn add(&mut self, class: usize, e: &Entry) {
        let cell = self.minutes.entry((e.minute, class)).or_default();
        cell.0 += 1;
        cell.1 += e.bytes;
        cell.2 += e.latency_us ^ (e.route ^ e.query ^ u64::from(e.client) ^ e.agent as u64) & 1;
    }

    /// A digest every contender must reproduce.
    pub(crate) fn digest(&self) -> (usize, u64, u64, u64) {
        let (n, b, l) = self
            .minutes
            .values()
            .fold((0, 0, 0), |a, c| (a.0 + c.0, a.1 + c.1, a.2 + c.2));
        (self.minutes.len(), n, b ^ l, self.malformed)
    }
}

/// The parse stage of the pipewright side: a block of lines in, its entries out, one
/// failure per malformed line (counted by the replicas' error policy).
#[derive(Default)]
pub(crate) struct ParseBlock;

impl pipewright::Stage for ParseBlock {
    type In = Result<pipewright::sources::LineBlock, pipewright::sources::BadLine>;
    type Out = Entry;
    type Error = ParseError;

    /// One block; its first malformed line is the error (the burst path below
    /// reports every one).
    fn process(
        &mut self,
        block: Self::In,
        out: &mut pipewright::Outbox<'_, Entry>,
    ) -> Result<(), ParseError> {
        let mut first = None;
        self.parse_into(block, out, |e| {
            first.get_or_insert(e);
        });
        first.map_or(Ok(()), Err)
    }

    fn process_burst(
        &mut self,
        burst: &mut pipewright::Burst<'_, Self::In>,
        out: &mut pipewright::Outbox<'_, Entry>,
        failures: &mut pipewright::Failures<'_, ParseError>,
    ) {
        while let Some(block) = burst.pop() {
            self.parse_into(block, out, |e| failures.push(e));
        }
    }
}

impl ParseBlock {
    fn parse_into(
        &mut self,
        block: <Self as pipewright::Stage>::In,
        out: &mut pipewright::Outbox<'_, Entry>,
        mut failed: impl FnMut(ParseError),
    ) {
        let Ok(block) = block else {
            return failed(ParseError::Encoding);
        };
        for line in block.lines() {
            match line
                .map_err(|_| ParseError::Encoding)
                .and_then(|l| parse(l.text))
            {
                Ok(entry) => out.push(entry),
                Err(e) => failed(e),
            }
        }
    }
}

/// The aggregation stage of the pipewright side: per-minute, per-class totals, emitted
/// once when the input ends.
#[derive(Default)]
pub(crate) struct Aggregate(Summary);

impl pipewright::Stage for Aggregate {
    type In = (usize, Entry);
    type Out = Summary;
    type Error = std::convert::Infallible;
    fn process(
        &mut self,
        (class, e): (usize, Entry),
        _: &mut pipewright::Outbox<'_, Summary>,
    ) -> Result<(), Self::Error> {
        self.0.add(class, &e);
        Ok(())
    }
    fn flush(&mut self, out: &mut pipewright::Outbox<'_, Summary>) -> Result<(), Self::Error> {
        out.push(std::mem::take(&mut self.0));
        Ok(())
    }
}
