//! The director's proposals in flight, forgotten when they commit or expire.
//!
//! A proposal commits when the record it was planned from changes: the committed changes
//! name the shards and units whose records changed, and only their proposals are looked at.
//! A proposal expires [`RETRY_AFTER`] after it was made; a queue in time order finds those.
//! Either way, forgetting costs what changed or expired, not what is in flight: thousands
//! of proposals are in flight at a start with thousands of shards.

use std::collections::{BTreeMap, BTreeSet};

use super::{PendingKey, RETRY_AFTER};
use crate::cluster::{Changes, ClusterState, FaultId};
use crate::ids::{ShardName, UnitName};
use crate::time::Time;

/// Proposals made and not yet seen committed or expired.
#[derive(Debug, Clone, Default)]
pub(super) struct Pending {
    /// Key → (when proposed, the shard version planned from).
    keys: BTreeMap<PendingKey, (Time, u64)>,
    /// The same, in the order they expire (entries of keys forgotten meanwhile stay until
    /// their time and are then skipped).
    by_time: BTreeSet<(Time, PendingKey)>,
    /// Shards and units whose committed records changed since the last [`Pending::expire`].
    shards_changed: BTreeSet<ShardName>,
    units_changed: BTreeSet<UnitName>,
    /// Anything may have changed (the topology did): look at every proposal.
    everything: bool,
}

impl Pending {
    /// Records a proposal made at `now`, planned from shard `version` (0 when none).
    pub(super) fn insert(&mut self, key: PendingKey, now: Time, version: u64) {
        self.by_time.insert((now, key.clone()));
        self.keys.insert(key, (now, version));
    }

    pub(super) fn contains(&self, key: &PendingKey) -> bool {
        self.keys.contains_key(key)
    }

    /// The committed state changed: the proposals of these records may have committed.
    pub(super) fn note_changes(&mut self, changes: &Changes) {
        if changes.topology {
            self.everything = true;
            return;
        }
        self.shards_changed.extend(changes.shards.iter().cloned());
        self.units_changed.extend(changes.units.iter().cloned());
    }

    /// Forgets the proposals that expired at `now` (handing each to `expired`, to be planned
    /// again) and those the committed `state` shows done.
    pub(super) fn expire(
        &mut self,
        now: Time,
        state: &ClusterState,
        mut expired: impl FnMut(&PendingKey),
    ) {
        while let Some((at, _)) = self.by_time.first() {
            if now.saturating_since(*at) < RETRY_AFTER {
                break;
            }
            let (at, key) = self.by_time.pop_first().expect("a first entry");
            if self.keys.get(&key).is_some_and(|(when, _)| *when == at) {
                self.keys.remove(&key);
                expired(&key);
            }
        }
        if std::mem::take(&mut self.everything) {
            self.shards_changed.clear();
            self.units_changed.clear();
            self.keys
                .retain(|key, (_, version)| !committed(state, key, *version));
            return;
        }
        let mut done = Vec::new();
        for shard in std::mem::take(&mut self.shards_changed) {
            let first = PendingKey::Shard(shard.clone());
            let in_sync = PendingKey::InSync(shard.clone(), 0, BTreeSet::new(), 0);
            let keys =
                self.keys
                    .range(&first..=&first)
                    .chain(self.keys.range(&in_sync..).take_while(
                        |(key, _)| matches!(key, PendingKey::InSync(s, ..) if *s == shard),
                    ));
            done.extend(
                keys.filter(|(key, (_, version))| committed(state, key, *version))
                    .map(|(key, _)| key.clone()),
            );
        }
        for unit in std::mem::take(&mut self.units_changed) {
            let fault = PendingKey::Fault(unit.clone(), FaultId::default());
            let restart = PendingKey::Restart(unit.clone(), 0);
            let keys =
                self.keys
                    .range(&fault..)
                    .take_while(|(key, _)| matches!(key, PendingKey::Fault(u, _) if *u == unit))
                    .chain(self.keys.range(&restart..).take_while(
                        |(key, _)| matches!(key, PendingKey::Restart(u, _) if *u == unit),
                    ));
            done.extend(
                keys.filter(|(key, (_, version))| committed(state, key, *version))
                    .map(|(key, _)| key.clone()),
            );
        }
        for key in done {
            self.keys.remove(&key);
        }
    }

    /// Checks that no proposal kept is done in `state` nor expired at `now` (a walk over all;
    /// for tests).
    #[cfg(test)]
    pub(super) fn check(&self, now: Time, state: &ClusterState) -> Result<(), String> {
        for (key, (at, version)) in &self.keys {
            if now.saturating_since(*at) >= RETRY_AFTER {
                return Err(format!("{key:?} expired but is kept"));
            }
            if committed(state, key, *version) {
                return Err(format!("{key:?} committed but is kept"));
            }
        }
        Ok(())
    }
}

/// Whether the proposal of `key`, planned from shard `version`, is done in `state`: the
/// record it was planned from moved on (or went).
fn committed(state: &ClusterState, key: &PendingKey, version: u64) -> bool {
    let kept = match key {
        PendingKey::Shard(shard) => state
            .shards
            .get(shard)
            .is_some_and(|record| record.version == version),
        PendingKey::Fault(unit, fault) => state.units.get(unit).is_some_and(|record| {
            record.generation == fault.generation && record.fault_seen < *fault
        }),
        PendingKey::InSync(shard, epoch, _, claim) => state
            .shards
            .get(shard)
            .is_some_and(|record| record.epoch == *epoch && record.in_sync_claim < *claim),
        PendingKey::Restart(unit, generation) => state
            .units
            .get(unit)
            .is_some_and(|record| record.generation == *generation && record.restart_pending),
    };
    !kept
}
