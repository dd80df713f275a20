//! The end-of-run checks: atomicity, answers, no lost update, the bank's total.

use pipewright_storage::log::Verdict;
use pipewright_storage::{PageId, Version};

use super::sim::*;

impl Sim {
    pub(crate) fn check(&self, label: &str) {
        // Client answers.
        for (txn, answers) in &self.replies {
            assert_eq!(answers.len(), 1, "{label}: {txn} told both outcomes");
        }
        // Atomicity: applied on every writing node or on none.
        for (txn, p) in &self.txns {
            let writers: Vec<u32> = p
                .writes
                .iter()
                .filter(|(_, w)| !w.is_empty())
                .map(|(n, _)| n.0)
                .collect();
            let applied: Vec<u32> = writers
                .iter()
                .copied()
                .filter(|&n| self.applied.contains(&(n, *txn)))
                .collect();
            assert!(
                applied.is_empty() || applied == writers,
                "{label}: {txn} applied on {applied:?} of {writers:?}"
            );
            let committed = self.decided.get(txn) == Some(&Verdict::Commit);
            assert_eq!(
                !applied.is_empty(),
                committed,
                "{label}: {txn} decided {:?}, applied on {applied:?}",
                self.decided.get(txn)
            );
            if let Some(answers) = self.replies.get(txn) {
                assert_eq!(
                    answers.contains(&true),
                    committed,
                    "{label}: {txn} answered {answers:?}, decided {:?}",
                    self.decided.get(txn)
                );
            }
        }
        // Every page holds its newest committed write; the bank's total is intact.
        let mut total = 0;
        let mut min = i64::MAX;
        for n in 0..NODES {
            for p in 0..ACCOUNTS {
                let page = PageId(p);
                let (version, data) = &self.nodes[n as usize].cache[&page];
                let newest = self
                    .applied_over
                    .range((n, page, 0)..=(n, page, Version::MAX))
                    .next_back()
                    .map(|(&(_, _, v), _)| v + 1)
                    .unwrap_or(1);
                assert_eq!(
                    *version, newest,
                    "{label}: node {n} {page} at version {version}, newest commit {newest}"
                );
                let bal = balance(data);
                total += bal;
                min = min.min(bal);
            }
        }
        assert_eq!(
            total,
            INITIAL * (NODES as i64) * ACCOUNTS as i64,
            "{label}: money created or destroyed"
        );
        assert!(min >= 0, "{label}: negative balance {min}");
    }
}
