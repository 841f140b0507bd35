//! The Raft checker. It watches what every replica reports and compare it against a global
//! record kept across the whole run, crashes included.
//!
//! - Election safety: at most one leader per term.
//! - Leader completeness: a node that becomes leader of term T holds, with the same term, every
//!   entry (beyond its own snapshot) that was committed in a term below T. The term an entry
//!   was committed in is bounded from above by the lowest current term of a node seen applying
//!   it (the committing leader applies it in its own term; a follower learns of the commit from
//!   a leader of that term or a later one). A stale leader of an old term, elected late from
//!   delayed votes, need not hold what later terms committed, and is not asked to.
//! - State machine safety: every node applies the same entry (term, command, context) at the
//!   same index, before and after restarts; a client's nonce is committed at most once.
//! - Ordered progress: within one life of a node, applied entries follow each other without
//!   gaps, a snapshot install only moves forward, and the commit index never decreases.
//! - Equal models: a node's `ClusterState` at applied index `i` equals the state obtained by
//!   applying the global log `1..=i` to the bootstrap state (or, while the global log has a
//!   gap before `i`, the state any other node reported at `i`).

use std::collections::btree_map::Entry as MapEntry;
use std::collections::BTreeMap;

use tandem_core::{ClusterState, Command, NodeId};
use tandem_raft::{Applied, Replica};

use crate::checks::{violation, Violation};
use crate::disk::SimDisk;
use crate::FailureKind;

/// One committed log entry as the checker records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEntry {
    /// Its index.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// The command (`None` for raft's empty entries).
    pub command: Option<Command>,
    /// The proposer's context bytes.
    pub context: Vec<u8>,
}

/// Context bytes the simulation's clients put on their proposals: a kind byte and a nonce.
pub const CONTEXT_CLIENT: u8 = 1;
/// Context kind of the liveness probes proposed after the fault phase.
pub const CONTEXT_PROBE: u8 = 2;

/// Encodes a client or probe context.
pub fn encode_context(kind: u8, nonce: u64) -> Vec<u8> {
    let mut context = vec![kind];
    context.extend_from_slice(&nonce.to_be_bytes());
    context
}

/// Decodes a client or probe context.
pub fn decode_context(context: &[u8]) -> Option<(u8, u64)> {
    let (&kind, nonce) = context.split_first()?;
    Some((kind, u64::from_be_bytes(nonce.try_into().ok()?)))
}

/// Per-node progress within its current life.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    /// Last index the node reported applied (or installed by snapshot, or restored at open).
    applied: u64,
    /// Highest commit index seen.
    commit: u64,
}

/// Everything the checkers remember over a run.
#[derive(Debug)]
pub struct Checker {
    /// term → the leader seen in that term.
    leaders: BTreeMap<u64, u64>,
    /// index → the entry applied there (by whichever node applied it first).
    committed: BTreeMap<u64, LoggedEntry>,
    /// index → the lowest current term of a node seen applying it: an upper bound of the term
    /// in which it was committed.
    commit_term: BTreeMap<u64, u64>,
    /// The bootstrap state with global entries `1..=model_digests.len() - 1` applied. Grows
    /// while the global log has no gap.
    model: ClusterState,
    /// `model_digests[i]`: the digest of the model at index `i` (a digest, not a copy: at
    /// thousands of shards a copy per index would not fit; the state keeps its digest as
    /// its records change, so taking one costs nothing).
    model_digests: Vec<StateDigest>,
    /// Digests of states nodes reported at indexes the model has not reached, first report
    /// per index.
    reported: BTreeMap<u64, (u64, StateDigest)>,
    /// The applied index each node's state was last checked at: a state is checked once per
    /// index it reaches, not every round.
    checked_at: BTreeMap<u64, u64>,
    /// Client and probe nonce → index where it was committed.
    nonces: BTreeMap<u64, u64>,
    /// Progress by node id.
    progress: BTreeMap<u64, Progress>,
}

impl Checker {
    /// A checker for a cluster bootstrapped with `members`.
    pub fn new(members: &[u64]) -> Self {
        Self {
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            commit_term: BTreeMap::new(),
            model: ClusterState::bootstrap(members.iter().map(|id| NodeId(*id))),
            model_digests: vec![digest(&ClusterState::bootstrap(
                members.iter().map(|id| NodeId(*id)),
            ))],
            reported: BTreeMap::new(),
            checked_at: BTreeMap::new(),
            nonces: BTreeMap::new(),
            progress: BTreeMap::new(),
        }
    }

    /// Number of distinct terms that had a leader.
    pub fn elections(&self) -> u64 {
        self.leaders.len() as u64
    }

    /// Highest index anyone applied.
    pub fn max_committed(&self) -> u64 {
        self.committed.keys().next_back().copied().unwrap_or(0)
    }

    /// Where a client or probe nonce was committed, if it was.
    pub fn nonce_index(&self, nonce: u64) -> Option<u64> {
        self.nonces.get(&nonce).copied()
    }

    /// The global committed log, in index order (it may have gaps, see the module doc).
    pub fn committed_log(&self) -> Vec<LoggedEntry> {
        self.committed.values().cloned().collect()
    }

    /// Indexes missing from the global log below its highest index.
    pub fn gaps(&self) -> u64 {
        self.max_committed() - self.committed.len() as u64
    }

    /// A node reports being leader. Returns whether this is a newly seen (term, leader).
    pub fn on_leader(&mut self, node: u64, replica: &Replica<SimDisk>) -> Result<bool, Violation> {
        let term = replica.term();
        match self.leaders.entry(term) {
            MapEntry::Occupied(seen) if *seen.get() != node => Err(violation(
                FailureKind::ElectionSafety,
                format!("two leaders in term {term}: {} and {node}", seen.get()),
            )),
            MapEntry::Occupied(_) => Ok(false),
            MapEntry::Vacant(vacant) => {
                vacant.insert(node);
                let from = replica.snapshot_index() + 1;
                for (index, entry) in self.committed.range(from..) {
                    let committed_in = self.commit_term.get(index).copied().unwrap_or(u64::MAX);
                    if committed_in >= term {
                        continue;
                    }
                    match replica.term_at(*index) {
                        Some(held) if held == entry.term => {}
                        held => {
                            return Err(violation(
                                FailureKind::LeaderCompleteness,
                                format!(
                                    "node {node} became leader of term {term} but holds term \
                                     {held:?} at committed index {index} (committed term {}; \
                                     its log: snapshot {}, last {})",
                                    entry.term,
                                    replica.snapshot_index(),
                                    replica.last_index()
                                ),
                            ))
                        }
                    }
                }
                Ok(true)
            }
        }
    }

    /// A node whose current term is `node_term` applied one entry.
    pub fn on_applied(
        &mut self,
        node: u64,
        node_term: u64,
        applied: &Applied,
    ) -> Result<(), Violation> {
        let bound = self.commit_term.entry(applied.index).or_insert(node_term);
        *bound = (*bound).min(node_term);
        let progress = self.progress.entry(node).or_default();
        if applied.index != progress.applied + 1 {
            return Err(violation(
                FailureKind::WentBackwards,
                format!(
                    "node {node} applied index {} right after index {}",
                    applied.index, progress.applied
                ),
            ));
        }
        progress.applied = applied.index;
        let entry = LoggedEntry {
            index: applied.index,
            term: applied.term,
            command: applied.command.clone(),
            context: applied.context.clone(),
        };
        match self.committed.entry(applied.index) {
            MapEntry::Occupied(seen) => {
                if *seen.get() != entry {
                    return Err(violation(
                        FailureKind::CommittedEntryChanged,
                        format!(
                            "node {node} applied {entry:?} at index {}, where {:?} was applied \
                             before",
                            applied.index,
                            seen.get()
                        ),
                    ));
                }
            }
            MapEntry::Vacant(vacant) => {
                vacant.insert(entry);
                if let Some((_, nonce)) = decode_context(&applied.context) {
                    if let Some(other) = self.nonces.insert(nonce, applied.index) {
                        return Err(violation(
                            FailureKind::DuplicateCommit,
                            format!(
                                "nonce {nonce} committed twice: at index {other} and {}",
                                applied.index
                            ),
                        ));
                    }
                }
                self.advance_model()?;
            }
        }
        Ok(())
    }

    /// Applies the global log to the model as far as it has no gap, checking the states nodes
    /// reported ahead of it.
    fn advance_model(&mut self) -> Result<(), Violation> {
        while let Some(entry) = self.committed.get(&(self.model_digests.len() as u64)) {
            if let Some(command) = &entry.command {
                self.model.apply(entry.index, command);
            }
            self.model.take_changes();
            self.model_digests.push(digest(&self.model));
        }
        let reached = self.model_digests.len() as u64;
        while let Some(entry) = self.reported.first_entry() {
            if *entry.key() >= reached {
                break;
            }
            let (index, (node, state)) = entry.remove_entry();
            self.compare_with_model(node, index, state, None)?;
        }
        Ok(())
    }

    /// Compares the digest of a node's state at `index` with the model's; `state`, when at
    /// hand, goes into the report.
    fn compare_with_model(
        &self,
        node: u64,
        index: u64,
        held: StateDigest,
        state: Option<&ClusterState>,
    ) -> Result<(), Violation> {
        let expected = self.model_digests[index as usize];
        if expected != held {
            let latest = self.model_digests.len() - 1;
            let model = if latest as u64 == index {
                format!("{:?}", self.model)
            } else {
                format!("a state of digest {expected:x} (the model is at {latest} now)")
            };
            return Err(violation(
                FailureKind::StateDiverged,
                format!(
                    "node {node} at applied index {index} holds {}, but the committed \
                     log gives {model}",
                    state.map_or_else(
                        || format!("a state of digest {held:x}"),
                        |s| format!("{s:?}")
                    )
                ),
            ));
        }
        Ok(())
    }

    /// A node installed a leader's snapshot at `index`.
    pub fn on_snapshot_installed(&mut self, node: u64, index: u64) -> Result<(), Violation> {
        self.checked_at.remove(&node);
        let progress = self.progress.entry(node).or_default();
        if index <= progress.applied {
            return Err(violation(
                FailureKind::WentBackwards,
                format!(
                    "node {node} installed a snapshot at {index} after applying up to {}",
                    progress.applied
                ),
            ));
        }
        progress.applied = index;
        Ok(())
    }

    /// After a round of work on a node: its applied index agrees with what it reported, its
    /// commit index did not go back, and its model equals the global one at that index.
    pub fn on_round(&mut self, node: u64, replica: &Replica<SimDisk>) -> Result<(), Violation> {
        let progress = self.progress.entry(node).or_default();
        if replica.applied_index() != progress.applied {
            return Err(violation(
                FailureKind::WentBackwards,
                format!(
                    "node {node} says it applied up to {}, but reported up to {}",
                    replica.applied_index(),
                    progress.applied
                ),
            ));
        }
        if replica.commit_index() < progress.commit {
            return Err(violation(
                FailureKind::WentBackwards,
                format!(
                    "node {node}'s commit index went from {} back to {}",
                    progress.commit,
                    replica.commit_index()
                ),
            ));
        }
        progress.commit = replica.commit_index();
        self.check_state(node, replica.applied_index(), replica.state())
    }

    /// A node restarted: its progress starts over from what it recovered.
    pub fn on_restart(&mut self, node: u64, replica: &Replica<SimDisk>) -> Result<(), Violation> {
        // A recovered state is checked even at an index checked before the crash.
        self.checked_at.remove(&node);
        self.progress.insert(
            node,
            Progress {
                applied: replica.applied_index(),
                commit: replica.commit_index(),
            },
        );
        self.check_state(node, replica.applied_index(), replica.state())
    }

    fn check_state(
        &mut self,
        node: u64,
        index: u64,
        state: &ClusterState,
    ) -> Result<(), Violation> {
        if self.checked_at.insert(node, index) == Some(index) {
            return Ok(());
        }
        let held = digest(state);
        if (index as usize) < self.model_digests.len() {
            return self.compare_with_model(node, index, held, Some(state));
        }
        match self.reported.entry(index) {
            MapEntry::Occupied(seen) => {
                let (other, other_held) = *seen.get();
                if other_held != held {
                    return Err(violation(
                        FailureKind::StateDiverged,
                        format!(
                            "at applied index {index} node {node} holds {state:?} but node \
                             {other} held another state (digest {other_held:x})"
                        ),
                    ));
                }
            }
            MapEntry::Vacant(vacant) => {
                vacant.insert((node, held));
            }
        }
        Ok(())
    }
}

/// A digest of a cluster state ([`ClusterState::digest`], kept as its records change):
/// equal states have equal digests.
type StateDigest = u64;

fn digest(state: &ClusterState) -> StateDigest {
    state.digest()
}
