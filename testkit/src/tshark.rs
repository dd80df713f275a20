//! tshark (Wireshark's CLI) as an independent decoder: which binary, whether it is
//! there, and its per-frame field output.
//!
//! ```no_run
//! use pipewright_testkit::tshark;
//!
//! if !tshark::require() {
//!     return;
//! }
//! let rows = tshark::fields(std::path::Path::new("capture.pcap"), &["ip.src", "udp.dstport"], &[]);
//! for row in &rows {
//!     println!("{:?} -> {:?}", row["ip.src"], row["udp.dstport"]);
//! }
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use crate::need::{require as require_tool, TSHARK};

/// One frame: field name -> every occurrence, in order (outer headers first).
pub type Row = HashMap<&'static str, Vec<String>>;

/// The separator tshark puts between occurrences of a repeated field.
pub const AGGREGATOR: char = ';';

/// The tshark to run: `$TSHARK` when set, else `tshark` from `PATH`.
pub fn bin() -> String {
    std::env::var("TSHARK").unwrap_or_else(|_| TSHARK.tool.to_owned())
}

/// [`crate::require`] for [`bin`]: one skip line when tshark is missing (Debian
/// package tshark), a failure instead when `PIPEWRIGHT_REQUIRE_TSHARK=1`.
pub fn require() -> bool {
    require_tool(&bin(), TSHARK.package, TSHARK.env_var)
}

/// Decodes `capture` (pcap or pcapng) with tshark, asking for `fields` (one column
/// each) with `extra` arguments (e.g. `["-d", "udp.port==6081,geneve"]` or
/// `["-o", "udp.check_checksum:TRUE"]`). IP checksums are verified; the personal
/// configuration is an empty directory next to the capture, so no user preference
/// changes what is decoded. Panics, with tshark's message, when tshark fails.
pub fn fields(capture: &Path, fields: &[&'static str], extra: &[&str]) -> Vec<Row> {
    let mut cmd = Command::new(bin());
    cmd.env(
        "WIRESHARK_CONFIG_DIR",
        capture.parent().unwrap_or(Path::new(".")),
    )
    .arg("-r")
    .arg(capture)
    .args(["-n", "-T", "fields"])
    .args(["-E", "separator=/t", "-E", "occurrence=a", "-E", "quote=n"])
    .args(["-E", &format!("aggregator={AGGREGATOR}")])
    .args(["-o", "ip.check_checksum:TRUE"])
    .args(extra);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} (Debian package tshark): {e}", bin()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tshark -r failed ({}):\n{}\n{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            assert_eq!(cols.len(), fields.len(), "tshark row: {line}");
            fields
                .iter()
                .zip(cols)
                .map(|(f, c)| {
                    let v = if c.is_empty() {
                        vec![]
                    } else {
                        c.split(AGGREGATOR).map(str::to_owned).collect()
                    };
                    (*f, v)
                })
                .collect()
        })
        .collect()
}

/// An integer field: tshark prints decimal or, for hex-based fields, `0x...`.
pub fn num(s: &str) -> u64 {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

/// A checksum status (epan/proto.h `proto_checksum_enum_e`) that says "good": tshark
/// prints it as a number, some versions by name.
pub fn good(status: &str) -> bool {
    matches!(status, "1" | "Good")
}
