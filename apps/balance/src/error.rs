//! Errors.

use std::path::PathBuf;

/// Everything that can go wrong in the balancer's processes and clients.
#[derive(Debug, thiserror::Error)]
pub enum BalanceError {
    /// An I/O operation failed.
    #[error("{what}: {source} (check the address, permissions and free space)")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The persisted producer registry cannot be read.
    #[error("the producer registry {path} is corrupt ({why}); restore it or remove it (producers re-register within a report period)")]
    Registry {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A pipeline could not start or has stopped.
    #[error("the agent pipeline failed: {0}; restart the agent")]
    Start(String),
    /// The agent is at its in-flight limit.
    #[error("the agent is busy; retry after a short backoff or ask another agent")]
    Busy,
    /// The peer answered something this version does not expect.
    #[error("protocol error: {0}; check that agent, producers and consumers run the same version")]
    Protocol(String),
    /// The agent refused the request.
    #[error("refused by the agent: {0}")]
    Refused(String),
    /// No agent could be reached or none has a producer to lease.
    #[error("no producer available: {0}; check that the agents run and producers report to them")]
    NoProducer(String),
    /// A non-idempotent request was in flight when its connection failed: it may or
    /// may not have been executed. It is not retried.
    #[error("the connection to producer {0} failed with the request in flight; its outcome is unknown (not retried: the request is not idempotent)")]
    Interrupted(u64),
    /// The producer answered that the request failed.
    #[error("the producer failed the request: {0}")]
    Failed(String),
    /// The request did not complete in time.
    #[error("the request timed out; the producer may be overloaded")]
    Timeout,
    /// An agent did not answer in time.
    #[error("agent {0} did not answer within 2 s: check that an agent runs at that address and is not overloaded")]
    AgentTimeout(std::net::SocketAddr),
    /// The client was shut down.
    #[error("the client is closed")]
    Closed,
}
