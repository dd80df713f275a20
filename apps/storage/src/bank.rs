//! A bank workload over a storage cluster: accounts on pages spread over the nodes,
//! transfers that each modify one page on two or more nodes with version checks.
//!
//! Used by `pipewright storage bench` and the cluster tests. Every account is one page
//! holding its balance (`i64`, little endian). A transfer picks accounts on `span`
//! distinct nodes and moves money from the first to the others in one transaction;
//! the total is constant and no balance goes negative if transactions are atomic and
//! isolated. The bank remembers the newest version of each account acknowledged as
//! committed (its *ledger*) so [`Bank::audit`] can check that every acknowledged
//! transaction is durable, e.g. after every node was killed and restarted.
//!
//! ```no_run
//! use pipewright_storage::bank::Bank;
//! use pipewright_storage::client::StorageClient;
//! use pipewright_storage::peers::Peers;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = StorageClient::new(Peers::load("peers.toml")?);
//! let bank = Bank::new(client, 16);
//! bank.open(1000).await?;
//! let mut rng = pipewright_storage::bank::Rng::new();
//! bank.transfer(3, &mut rng).await?;
//! let audit = bank.audit().await?;
//! assert_eq!(audit.total, bank.expected_total());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::client::{ClientError, StorageClient, Transaction};

use crate::types::{NodeId, PageId, Version};
/// The random number generator transfers draw from (re-exported so callers need no
/// extra dependency).
pub use fastrand::Rng;

/// An account: one page of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Account {
    /// The node.
    pub node: NodeId,
    /// The page.
    pub page: PageId,
}

/// The result of [`Bank::audit`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    /// Accounts read.
    pub accounts: usize,
    /// The sum of all balances.
    pub total: i64,
    /// The smallest balance.
    pub min: i64,
    /// Accounts whose version is older than an acknowledged commit, or whose balance
    /// differs from it at the same version (must be empty).
    pub lost: Vec<Account>,
}

fn balance(data: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    i64::from_le_bytes(b)
}

/// Bank accounts on a storage cluster.
#[derive(Debug)]
pub struct Bank {
    client: StorageClient,
    nodes: Vec<NodeId>,
    per_node: u64,
    total: Mutex<i64>,
    /// Last known (version, balance) per account; dropped on abort.
    cache: Mutex<HashMap<Account, (Version, i64)>>,
    /// The newest acknowledged (version, balance) per account.
    ledger: Mutex<HashMap<Account, (Version, i64)>>,
}

impl Bank {
    /// Accounts on pages `0..per_node` of every node of the client's peers.
    pub fn new(client: StorageClient, per_node: u64) -> Self {
        let nodes = client.peers().ids();
        Self {
            client,
            nodes,
            per_node,
            total: Mutex::new(0),
            cache: Mutex::default(),
            ledger: Mutex::default(),
        }
    }

    /// Every account.
    pub fn accounts(&self) -> Vec<Account> {
        self.nodes
            .iter()
            .flat_map(|&node| {
                (0..self.per_node).map(move |p| Account {
                    node,
                    page: PageId(p),
                })
            })
            .collect()
    }

    /// The total every audit must find.
    pub fn expected_total(&self) -> i64 {
        *self.total.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Give every account `initial` in one transaction if the bank is new; otherwise
    /// adopt the existing balances (their sum becomes the expected total).
    pub async fn open(&self, initial: i64) -> Result<(), ClientError> {
        let mut txn = Transaction::new();
        let mut fresh = true;
        let mut total = 0;
        for a in self.accounts() {
            let page = self.client.read(a.node, a.page).await?;
            fresh &= page.version == 0;
            total += balance(&page.data);
            txn = txn.write(a.node, a.page, page.version, initial.to_le_bytes().to_vec());
        }
        if fresh {
            self.client.commit(txn).await?;
            total = initial * self.accounts().len() as i64;
        }
        *self.total.lock().unwrap_or_else(|p| p.into_inner()) = total;
        Ok(())
    }

    async fn state(&self, a: Account) -> Result<(Version, i64), ClientError> {
        if let Some(&s) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&a) {
            return Ok(s);
        }
        let page = self.client.read(a.node, a.page).await?;
        Ok((page.version, balance(&page.data)))
    }

    /// One transfer attempt over accounts on `span` distinct nodes (at least 2): the
    /// first pays up to 10 to each of the others. An abort (conflict, stale version)
    /// is returned as is; the caller retries.
    pub async fn transfer(&self, span: usize, rng: &mut Rng) -> Result<(), ClientError> {
        self.transfer_via(&self.client, span, rng).await
    }

    /// [`transfer`](Self::transfer) through another client (another connection set and
    /// client id) of the same cluster.
    pub async fn transfer_via(
        &self,
        client: &StorageClient,
        span: usize,
        rng: &mut Rng,
    ) -> Result<(), ClientError> {
        let mut nodes = self.nodes.clone();
        rng.shuffle(&mut nodes);
        nodes.truncate(span.clamp(2, self.nodes.len().max(2)));
        let accounts: Vec<Account> = nodes
            .iter()
            .map(|&node| Account {
                node,
                page: PageId(rng.u64(0..self.per_node)),
            })
            .collect();
        let mut states = Vec::with_capacity(accounts.len());
        for &a in &accounts {
            states.push(self.state(a).await?);
        }
        let payees = accounts.len() as i64 - 1;
        let amount = rng.i64(1..=10).min(states[0].1 / payees.max(1)).max(0);
        let mut txn = Transaction::new();
        let mut after = Vec::with_capacity(accounts.len());
        for (i, (&a, &(version, bal))) in accounts.iter().zip(&states).enumerate() {
            let new = if i == 0 {
                bal - amount * payees
            } else {
                bal + amount
            };
            after.push((a, (version + 1, new)));
            txn = txn.write(a.node, a.page, version, new.to_le_bytes().to_vec());
        }
        match client.commit(txn).await {
            Ok(_) => {
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
                for (a, s) in after {
                    cache.insert(a, s);
                    let newest = ledger.entry(a).or_insert(s);
                    if s.0 > newest.0 {
                        *newest = s;
                    }
                }
                Ok(())
            }
            Err(e) => {
                if !matches!(e, ClientError::Busy { .. }) {
                    let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                    for a in &accounts {
                        cache.remove(a);
                    }
                }
                Err(e)
            }
        }
    }

    /// Forget cached balances (after a restart of the cluster, for example).
    pub fn clear_cache(&self) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Wait until no node has an unfinished transaction (in-doubt intents resolved,
    /// commits applied and acknowledged everywhere), polling every 50 ms.
    pub async fn settle(&self, deadline: Duration) -> Result<(), ClientError> {
        let start = tokio::time::Instant::now();
        loop {
            let mut busy = 0;
            for &node in &self.nodes {
                match self.client.status(node).await {
                    Ok(s) => busy += s.unfinished,
                    Err(e) if start.elapsed() >= deadline => return Err(e),
                    Err(_) => busy += 1,
                }
            }
            if busy == 0 {
                return Ok(());
            }
            if start.elapsed() >= deadline {
                return Err(ClientError::Protocol(format!(
                    "{busy} transactions still unfinished after {deadline:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Read every account: the total, the smallest balance, and acknowledged commits
    /// that are missing. Run it on a settled cluster ([`settle`](Self::settle)).
    pub async fn audit(&self) -> Result<Audit, ClientError> {
        let ledger = self
            .ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut audit = Audit {
            min: i64::MAX,
            ..Audit::default()
        };
        for a in self.accounts() {
            let page = self.client.read(a.node, a.page).await?;
            let bal = balance(&page.data);
            audit.accounts += 1;
            audit.total += bal;
            audit.min = audit.min.min(bal);
            if let Some(&(version, acked)) = ledger.get(&a) {
                if page.version < version || (page.version == version && bal != acked) {
                    audit.lost.push(a);
                }
            }
        }
        Ok(audit)
    }
}
