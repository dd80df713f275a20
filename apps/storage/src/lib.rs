//! pipewright's storage commit chain: pages on a chain of storage nodes, committed
//! atomically by a linear two-phase commit with durable intents and a decider.
//!
//! The node's pure, synchronous pieces:
//!
//! - [`log`]: the append-only log (intent, decision, completion, forget and
//!   checkpoint records): framing with length + CRC-32C, [`log::encode`] into a
//!   caller buffer (for the group-commit sink), [`log::replay`] up to the first torn
//!   or corrupt record, [`log::segments`] (a checkpoint starts a new segment) and
//!   [`log::format`] (the data directory's format marker: a node refuses to start on
//!   a directory of another format, naming both versions);
//! - [`pages`]: the page file of fixed 8 KiB pages with a versioned, checksummed header;
//! - [`locks`]: the no-wait page lock table used by the prepare analysis (`Sync`,
//!   loom-checked);
//! - [`protocol`]: the per-node, sans-I/O protocol state machine [`protocol::Node`].
//!
//! and the processes built on them:
//!
//! - [`server`]: the node process. Its request path is a pipewright pipeline on the
//!   pipewright runtime — decoded frames → node stage (`Node::handle`) → the io_uring
//!   group-commit log sink (one write + one `fdatasync` per burst, lingering up to
//!   `NodeOptions::linger` for a fuller burst while other transactions are open) →
//!   after-log stage
//!   (`Node::persisted`: durable notice, decide, reply) — with a TCP transport ([`wire`]:
//!   length-delimited postcard frames; one link per peer; clients on the same
//!   listener), admission control (`Busy`) and recovery from the log on start;
//! - [`client`]: [`client::StorageClient`], the coordinator, a
//!   `tower::Service<Transaction>`, plus page reads, node status and `resolve`
//!   (settle in-doubt transactions now: `pipewright storage resolve`);
//! - [`peers`]: the peers file; [`cluster`]: a local cluster of node processes;
//!   `bank` and `bench` (feature `bench`): the bank workload and benchmark behind
//!   `pipewright storage bench`.
//!
//! # The protocol
//!
//! The coordinator (client) orders the nodes holding the transaction's pages into a
//! chain; the last is the **decider**. One `Prepare` carrying the chain and every node's
//! writes travels down the chain; each node analyses its own writes (page locks,
//! expected versions, space), forwards the `Prepare` at once and logs its **intent**
//! (the syncs of the chain's nodes overlap). Every node but the decider sends a
//! `Durable` notice straight to the decider once its own intent is durable. The
//! decider analyses, waits for the notices of all the other nodes, makes its intent
//! and the **decision** durable, answers the client, and sends `Commit` back up the
//! chain: 4(N−1) messages with the acknowledgements. Each node applies its writes,
//! passes `Commit` on, and acknowledges to the decider once its completion record is
//! durable; the decider forgets the decision after the last `Ack`.
//!
//! ```text
//!  client        head (n0)             n1                decider (n2)
//!    | Prepare      |                   |                     |
//!    |------------->| lock+check        |                     |
//!    |              |----- Prepare ---->| lock+check          |
//!    |              | log Intent, fsync |------ Prepare ----->| lock+check
//!    |              |                   | log Intent, fsync   |   (waits)
//!    |              |------------------ Durable ------------->|
//!    |              |                   |------ Durable ----->| (both arrived)
//!    |              |                   |                     | log Intent+Decision, fsync
//!    |<----------------------------- Committed ---------------| apply, unlock
//!    |              |                   |<----- Commit -------|
//!    |              |<---- Commit ------| apply, unlock       |
//!    |              | apply, unlock     | log Completion, fsync
//!    |              | log Completion,   |------- Ack -------->|
//!    |              |   fsync           |                     |
//!    |              |---------------------- Ack ------------->| log Forget
//!
//!  failed analysis at n1:           crash of a yes-voter (n0 or n1):
//!    n1: log Completion(abort),       restart: replay log, re-take the intent's
//!        fsync, reply Aborted to         locks, send Resolve to the decider, which
//!        the client, Abort -> n0         answers Commit or Abort
//!    n0: unlock, Abort -> (head)
//! ```
//!
//! # Pipelined prepares, and why they are safe
//!
//! Before, a node forwarded the `Prepare` only once its intent was durable, so a
//! chain of N nodes paid N `fdatasync`s one after the other. Now the `Prepare` goes
//! on as soon as the analysis passed, and durability travels separately: each node
//! but the decider sends a `Durable` notice **straight to the decider**, only once
//! its own intent is durable. The decider decides only once it holds the notice of
//! every other chain node, i.e. once every other chain node's intent is durable —
//! exactly what the old forwarding rule guaranteed when the `Prepare` arrived. (The
//! notices used to travel hop by hop down the chain, each node passing it on once its
//! own intent was durable too; sent straight, they cost the same N − 1 messages but no
//! longer wait for each other: a 3-node chain's commit path is one hop and one
//! wake-up shorter.) The decider writes nothing and decides nothing before the
//! notices (it only takes its locks), so the commit point is unchanged: the decider's durable `Decision(commit)` (F = 0), or
//! its commit proposal (F ≥ 1, sent only once its intent is durable after the
//! notice). The N − 1 syncs before the decider's overlap, so a 3-node chain pays two
//! syncs in sequence instead of three.
//!
//! What can now happen that could not before, and why it is harmless:
//!
//! - A later node refuses (or is late) while an earlier one's intent is still on its
//!   way to the log: the `Abort` reaches a node in `Preparing`; it releases its locks
//!   and writes its abort completion after the intent (a crash in between leaves an
//!   in-doubt intent, settled by `Resolve` like any other).
//! - A node crashes before its intent is durable, or a `Prepare` or notice is lost:
//!   the decider never gets that node's notice (a prepared node repeats its notice
//!   on every tick). Having decided nothing, it may presume abort: after `patience`
//!   retry ticks without the notices it durably decides abort and
//!   tells the client and its predecessor. A node prepared in the meantime asks the
//!   decider (`Resolve`) as before and gets abort.
//! - A notice overtakes its `Prepare` (reordering, or simply a head faster than the
//!   `Prepare`'s hops): it is kept until the `Prepare` comes, at most a checkpoint
//!   interval.
//!
//! The model check (`tests/model/`) checks *validity* — a commit (applied,
//! replied or decided) needs every chain node's durable intent — under reordering,
//! loss, duplication and crashes between any two log writes; the deliberate bugs of
//! sending the notice before the node's own intent is durable, or of a decider that
//! decides before every notice arrived, are caught there as counterexamples (a
//! commit with a node's intent lost in a crash), and by the simulation's atomicity
//! check.
//!
//! # Decisions that survive the decider (F acceptors, Paxos Commit style)
//!
//! A transaction may carry **F ≥ 1** ([`protocol::Prepare::acceptors`], the client's
//! [`client::StorageClient::set_acceptors`], `--acceptors` on the CLI): the F chain
//! nodes just before the decider are the decision's **acceptors**
//! ([`protocol::acceptors_of`]). The decision is then a one-instance Paxos per
//! transaction with asymmetric quorums:
//!
//! - **Ballot 0 belongs to the decider.** Once its intent is durable it sends
//!   `Accept(ballot 0, commit)` to every acceptor; each makes an `Accept` record durable
//!   and answers `Accepted`. Only when **all F** have accepted does the decider write
//!   its `Decision(commit)` and act (apply, answer the client, `Commit` up the chain):
//!   the commit is then durable on F + 1 nodes. Abort decisions need no replication:
//!   a decider that aborts never proposes commit, and no one else can.
//! - **Recovery ballots** (round ≥ 1, any chain node): a node prepared for longer than
//!   its patience (`NodeOptions::settle_after`, 2 s; a decider in doubt after a restart
//!   at once) sends `Query(ballot)` to the chain. An acceptor that has not promised a
//!   higher ballot durably promises and reports what it accepted (`Promise`); a node
//!   that knows the outcome answers `Commit`/`Abort`; a node that never prepared the
//!   transaction durably records abort and answers `Abort` (it never voted yes and now
//!   never will). With promises from a **majority of the acceptors** the node proposes
//!   the verdict of the highest accepted ballot among them, or — if none accepted
//!   anything — abort (the decider itself, which knows every node voted yes, proposes
//!   commit); once a majority accepted, the verdict is chosen: it tells every chain
//!   node and settles. A refusal (`Nack`) or a tick without progress starts a higher
//!   round.
//! - **Why no two nodes learn different outcomes.** Every recovery quorum (a majority
//!   of the acceptors) meets every other and meets ballot 0's quorum (all acceptors), so
//!   by Paxos' argument once a verdict is chosen every higher ballot proposes it; a
//!   commit chosen at ballot 0 is seen by every recovery; a recovery that saw no
//!   acceptance had promised on a majority, so ballot 0 can no longer gather all F.
//!   The decider's `Decision(commit)` is written only after the commit was chosen, so
//!   it is never redone wrongly after a restart; a decider restarting with an intent
//!   but no decision does not presume abort (it may have proposed) but learns the
//!   outcome like any node in doubt. Model-checked with F = 1 (`tests/model/`:
//!   agreement, validity, the decider crashing at any step, or dying for good at any
//!   step with every live node still settling) and simulated (`tests/simulation/`).
//!
//! # The guarantee: presumed abort
//!
//! - **Atomicity.** Every node applies the transaction's writes or none does. The only
//!   commit point is the decider's durable `Decision(commit)`; the decider writes it only
//!   after receiving the `Durable` notice of every other chain node, i.e. after every
//!   other node's intent is durable.
//! - **Durability of answers.** The client is told `Committed` only after the decision is
//!   durable; it is told `Aborted` only after an abort record is durable on the node
//!   that refused (so a late duplicate `Prepare` cannot revive the transaction).
//! - **A yes-voter never aborts on its own.** A node with a durable intent and no logged
//!   outcome is *in doubt*: it keeps its page locks, across restarts, until the decider
//!   (or its successor's `Abort`) tells it the outcome.
//! - **Presumed abort, exactly:** a decider asked (`Resolve`) about a transaction it has
//!   no record of decides *abort*, makes that decision durable, and then answers abort;
//!   from then on a late `Prepare` for that transaction is refused. It has no record
//!   only if it never logged a decision for it: a commit decision is kept in the log and
//!   in memory, and re-sent, until **every** other chain node has acknowledged a durable
//!   completion (`Forget`); only after that may a log checkpoint drop it. Abort
//!   decisions and abort completions need no acknowledgements, and a node's abort
//!   completion after an `Abort` message is written lazily (if lost, asking again gives
//!   abort again).
//! - **Forgotten transactions stay refused.** Transaction ids increase per client.
//!   When a checkpoint forgets a finished transaction, the node keeps only its
//!   client's *low-water mark* (the highest forgotten id), durably in every later
//!   checkpoint. A `Prepare` for an unknown transaction at or below its client's mark
//!   is refused without creating any state (and `Abort` goes to its predecessor); a
//!   `Resolve` for one is answered abort without a record (a committed transaction is
//!   forgotten only after every node acknowledged, so no node is still prepared); a
//!   `Commit` for an unknown transaction is acknowledged again (it carries its
//!   decider: the node completed it and forgot it). The client of such a late
//!   `Prepare` is answered `Outcome::Forgotten` — not a verdict, since the node cannot
//!   tell a late copy of a transaction decided (and told) long before from one
//!   overtaken by a later transaction of the same client by a whole checkpoint
//!   interval (which is aborted); the client reports the outcome as unknown at once
//!   instead of timing out.
//! - **Idle clients fold into a floor.** A mark not raised during `mark_horizon`
//!   checkpoints (4 by default) is removed and folded into the node's *floor*, one id
//!   for all clients, kept in every later checkpoint: any unknown transaction at or
//!   below the floor is late, whatever its client. The floor refuses everything the
//!   folded marks refused, and more, so refusing by it is as safe as by the marks (a
//!   refusal never commits anything); what it costs is liveness for fresh ids below
//!   it. A refusal (`Outcome::Forgotten`) carries the floor; the client then picks its
//!   later ids above it (a random step of up to 2^40, so clients refused in the same
//!   interval stay apart), and a transaction refused by the *head* — which started
//!   nothing anywhere — is sent again once with such an id. Since clients start at
//!   random ids below 2^62, a new client's first transaction at a node with a floor is
//!   usually refused once at the head: one extra round trip, no fsync. The floor trusts
//!   its clients: one transaction with an id near `u64::MAX` would, once folded, have
//!   every later one refused. That is why only holders of the cluster key may start
//!   transactions at all ([`auth`]).
//!
//! # Log truncation, and what is forgotten when
//!
//! A node starts a checkpoint once `checkpoint_bytes` of log (4 MiB by default) were
//! written since the last one ([`protocol::Node::checkpoint`]). The checkpoint record
//! holds the low-water marks, the transactions finished since the previous
//! checkpoint (id, client, verdict), and re-logged records of every unfinished one
//! (intents of prepared and in-doubt transactions, a decider's commit decisions
//! still awaiting acknowledgements). The log writer syncs the bytes before it to the
//! current segment, **syncs the page file** (so no forgotten transaction needs redo),
//! writes the checkpoint as the first record of a new segment, syncs it and the
//! directory, and only then deletes the old segment and tells the node, which then
//! forgets every transaction that was already finished at the previous checkpoint.
//!
//! - A crash before the new segment's checkpoint is durable (even with half of it
//!   written) leaves the old segment complete: recovery deletes the newer one and
//!   replays the old. A crash after leaves both: recovery uses the newer one and
//!   deletes the old. Nothing the node announced depended on an undurable record.
//!   (Tested with crash points `before-checkpoint`, `checkpoint-torn`,
//!   `after-checkpoint`, in the model check and in the simulation.)
//! - Redo after a checkpoint starts from the page file's synced state; writes carry
//!   whole pages, so redo also repairs a page torn by a crash.
//!
//! **Bounds.** Disk: one segment of at most about `checkpoint_bytes` plus one
//! burst and the checkpoint record; two segments only during a rotation. Memory: a
//! node remembers the transactions in flight plus those finished during the last two
//! checkpoint intervals, one low-water mark (16 bytes) per client whose
//! transactions it forgot during the last `mark_horizon` + 2 checkpoint intervals,
//! and the floor: the marks follow the clients active lately, not every client ever
//! seen (`tests/marks.rs`: 100,000 clients of one transaction each with 16 KiB
//! checkpoints keep about 570 marks, checkpoints under 13 KiB, one checkpoint per
//! 16 KiB of other records and a log of at most 29 KiB on disk). The checkpoint
//! record does not count towards the next checkpoint's `checkpoint_bytes` (it did:
//! once the marks outgrew the interval, every append started a checkpoint).
//! The decider's pending commit decisions are part of the "in flight" set: a
//! permanently lost node keeps them (and their re-logged records) forever.
//!
//! # What blocks when
//!
//! - Transactions never wait for locks: a prepare that meets a held page aborts at once
//!   with `Conflict { page, holder }` (no-wait; no deadlocks), and the client retries.
//! - A node that prepared holds its page locks until it learns the outcome.
//!   **F = 0** (plain two-phase commit): if the decider is down or unreachable,
//!   in-doubt nodes stay blocked: other transactions touching those pages abort with
//!   `Conflict` until the decider answers a `Resolve`. **F ≥ 1**: an in-doubt node
//!   waits for the decider at most its patience (`settle_after`, 2 s by default),
//!   then settles the outcome with a majority of the acceptors, without the decider:
//!   its locks are released and its pages take new transactions while the decider is
//!   still down. It still blocks while a majority of the acceptors (F = 1: the one
//!   acceptor) is unreachable as well as the decider, and while the decider is alive
//!   but cannot reach every acceptor its commit waits (ballot 0 needs all F; a
//!   recovery ballot then settles it). An acceptor forgets a finished transaction a
//!   checkpoint interval after it finished, like every node; a node still in doubt
//!   after that learns from the decider only. Nodes *before* a failed node are
//!   released by the `Abort` flowing back, or by `Resolve` → presumed abort if that
//!   message is lost.
//! - The coordinator's failure after sending `Prepare` blocks nothing: the chain runs
//!   without it, and only its answer is lost.
//! - F ≥ 1 costs the commit path one more round trip (decider → acceptors → decider)
//!   and one more durable record on each acceptor (group-committed with its other
//!   records); aborts cost nothing more.
//! - The decider keeps a committed decision (memory and log) until every node
//!   acknowledges; a permanently lost node keeps it forever.
//! - A checkpoint blocks nothing: the node keeps analysing while the log writer
//!   syncs the page file and rotates the segment (requests only wait for their own
//!   records, which queue behind the checkpoint, as in any group commit).
//!
//! # Determinism and the host
//!
//! [`protocol::Node`] performs no I/O: its host executes the returned
//! [`protocol::Action`]s in order — `Send`, `Persist` (append to the log; call
//! `persisted(id)` once durable, and the node sends nothing depending on the record
//! before that), `Apply` (page writes, synced at checkpoints; until then the intents in
//! the log are the redo source) and `Reply`. `tests/model/` model checks the very same
//! state machine with `stateright` under message loss, duplication, reordering,
//! crashes and checkpoints; `tests/simulation/` drives several nodes over a
//! seeded simulated network (loss, duplication with very late copies, reordering,
//! crashes losing unsynced page writes, checkpoints) through thousands of bank
//! transfers and checks atomicity, no lost update and bounded state.
//!
//! # Fault injection
//!
//! Only with the cargo feature `faults` (off by default; the facade's
//! `storage-faults`): tests can start node processes with
//! `PIPEWRIGHT_STORAGE_NET_FAULTS` (see `server::NetFaults`: drop, duplicate,
//! delay/reorder messages on peer links) and with the hidden `--crash-at STEP:N` flag
//! (protocol and checkpoint steps, `server::Step`). Any build can set
//! `PIPEWRIGHT_STORAGE_CHECKPOINT_BYTES` (small checkpoints).
//!
//! The bank workload and its benchmark driver (`bank`, `bench`) are behind the
//! feature `bench` (on in the facade's `storage`, for `pipewright storage bench`).

#![warn(missing_docs)]

#[cfg(not(loom))]
pub mod auth;
#[cfg(all(not(loom), feature = "bench"))]
pub mod bank;
#[cfg(all(not(loom), feature = "bench"))]
pub mod bench;
#[cfg(not(loom))]
pub mod client;
#[cfg(not(loom))]
pub mod cluster;
pub mod locks;
#[cfg(not(loom))]
pub mod log;
#[cfg(not(loom))]
pub mod pages;
#[cfg(not(loom))]
pub mod peers;
#[cfg(not(loom))]
pub mod protocol;
#[cfg(not(loom))]
pub mod server;
mod sync;
mod types;
#[cfg(not(loom))]
pub mod wire;

/// Shared page data ([`PageWrite::data`](crate::log::PageWrite::data)).
#[cfg(not(loom))]
pub use bytes::Bytes;
pub use types::{ClientId, NodeId, PageId, TxnId, Version};

/// A tokio runtime for the node process and clients (`threads` workers, I/O and
/// timers enabled), for callers that do not otherwise depend on tokio. `threads = 0`
/// gives a current-thread runtime: every task runs on the thread calling `block_on`,
/// and only while it is inside it (the node process uses it, blocked on it for its
/// whole life: one thread fewer to wake).
///
/// ```
/// let rt = pipewright_storage::io_runtime(1)?;
/// assert_eq!(rt.block_on(async { 1 + 1 }), 2);
/// let rt = pipewright_storage::io_runtime(0)?;
/// assert_eq!(rt.block_on(async { tokio::spawn(async { 2 }).await.unwrap() }), 2);
/// # Ok::<(), std::io::Error>(())
/// ```
#[cfg(not(loom))]
pub fn io_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads == 0 {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
}

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM. Must be polled within a tokio
/// runtime.
#[cfg(not(loom))]
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let terminated = async {
        match term.as_mut() {
            Some(term) => {
                term.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminated => {}
    }
}
