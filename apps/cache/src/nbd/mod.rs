//! The NBD gateway: the cache served to real NBD clients (newstyle, fixed handshake,
//! simple replies), one export per backend volume, by name.
//!
//! Options: `NBD_OPT_EXPORT_NAME`, `NBD_OPT_GO`/`NBD_OPT_INFO` (export size and flags,
//! block sizes), `NBD_OPT_LIST`, `NBD_OPT_ABORT`; anything else gets
//! `NBD_REP_ERR_UNSUP`. Commands: read, write (with or without FUA: every write is
//! durable when acknowledged), write-zeroes, flush, disconnect. An unknown export gets
//! `NBD_REP_ERR_UNKNOWN` (or, for the old `EXPORT_NAME` option that has no error reply,
//! the connection is closed); an out-of-range read `EINVAL`, an out-of-range write
//! `ENOSPC`; an unknown command `EINVAL`; a header without the request magic or an
//! oversized write ends that connection only. Everything is counted in [`NbdStats`].

mod queued;
mod server;
mod wire;

pub use server::{
    NbdServer, NbdStats, DEFAULT_HANDSHAKE_DEADLINE, DEFAULT_IN_FLIGHT_BYTES,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_PEER,
};
pub use wire::RequestError;
