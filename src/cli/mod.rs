//! Subcommands of the `pipewright` tool.

#[cfg(feature = "balance")]
pub(crate) mod balance;
#[cfg(feature = "cache")]
pub(crate) mod cache;
pub(crate) mod demo;
#[cfg(feature = "failures")]
pub(crate) mod failures;
pub(crate) mod live;
#[cfg(feature = "memshare")]
pub(crate) mod memshare;
#[cfg(feature = "nic")]
pub(crate) mod nic;
#[cfg(feature = "storage")]
pub(crate) mod storage;
pub(crate) mod top;

/// A number of seconds from the command line: positive, finite and at most a day (a
/// `Duration` made of `inf` or `1e20` panics).
pub(crate) fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t.is_finite() && t > 0.0 && t <= MAX_SECONDS => Ok(t),
        _ => Err(format!(
            "`{s}` is not a number of seconds from 0 to {MAX_SECONDS} (one day)"
        )),
    }
}

/// The longest timeout or run the CLI takes, in seconds.
pub(crate) const MAX_SECONDS: f64 = 86_400.0;
