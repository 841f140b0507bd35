//! In-sync claims: what each primary here asks the cluster to record as in sync (the
//! STANDBYs verified in their current session), the log of claims made at an epoch
//! ([`ClaimLog`]) that keeps claimed STANDBYs in the wait set, and the per-replica caches that
//! keep [`DataPlane::take_claims_change`] and [`DataPlane::awaits_local_durability`] free of
//! walks over every shard.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{ShardName, UnitName};

use super::primary::{has_wait_set, Primary};
use super::view::ShardView;
use super::{DataPlane, ReplicaId, SlotRole};

/// The in-sync claims a primary of one shard made at one epoch (kept by the plane, not the
/// primary, so that they outlive a primary replaced at the same epoch).
#[derive(Debug, Clone, Default)]
pub(super) struct ClaimLog {
    epoch: u64,
    /// The sequence number of the last claim; it grows whenever the claimed units change.
    seq: u64,
    /// The units of the last claim (`None`: no claim yet at this sequence number).
    units: Option<BTreeSet<UnitName>>,
    /// Each STANDBY ever claimed at this epoch, and the last claim that included it. While the
    /// view's `in_sync_claim` is below it, that claim may still be applied (recording the
    /// STANDBY in sync), so the STANDBY stays in the wait set.
    last_claimed: BTreeMap<UnitName, u64>,
}

impl ClaimLog {
    /// STANDBYs a claim of the primary at `view`'s epoch included that the cluster may still
    /// record in sync.
    pub(super) fn pending<'a>(
        log: Option<&'a Self>,
        view: &'a ShardView,
    ) -> impl Iterator<Item = &'a UnitName> + 'a {
        log.filter(|log| log.epoch == view.epoch)
            .into_iter()
            .flat_map(|log| log.last_claimed.iter())
            .filter(|(_, claim)| **claim > view.in_sync_claim)
            .map(|(unit, _)| unit)
    }
}

/// A replica's claim is the one cached (see `DataPlane::compute_claim`).
struct Unchanged;

/// The STANDBYs `primary` may claim in sync: in step in their session, and acknowledged as far
/// as any effect that left the primary.
fn claimable_standbys(primary: &Primary) -> impl Iterator<Item = &UnitName> + '_ {
    primary
        .sessions
        .iter()
        .filter(|(_, session)| session.in_step() && session.acked_version() >= primary.exposed)
        .map(|(unit, _)| unit)
}

impl DataPlane {
    /// What each primary here asks the cluster to record as in sync: the STANDBYs verified in
    /// their current session, at the epoch and shard version of the view, with the claim's
    /// sequence number (a new one whenever the units change). The primary keeps every STANDBY
    /// claimed here in its wait set until the view shows a claim at least as new applied.
    /// Costs a walk over every primary here; passes take [`DataPlane::take_claims_change`].
    pub fn claims(&mut self) -> BTreeMap<ShardName, crate::report::InSyncClaim> {
        self.refresh_pending_claims();
        self.claims_changed.clear();
        self.cached_claims()
    }

    /// The claims as last refreshed (what [`DataPlane::claims`] gives once the replicas
    /// touched since are refreshed), for the simulation's cache checks.
    pub fn cached_claims(&self) -> BTreeMap<ShardName, crate::report::InSyncClaim> {
        self.claim_cache
            .iter()
            .map(|(id, claim)| (id.shard.clone(), claim.clone()))
            .collect()
    }

    /// What changed in [`DataPlane::claims`] since the last call of either: each shard whose
    /// claim changed, with its claim now (`None`: it has none any more). Empty when nothing
    /// changed. The owner's every pass asks; a pass refreshes only the replicas its inputs
    /// touched and hands over only the claims that moved, so that a pass costs the same
    /// whatever the number of shards here.
    pub fn take_claims_change(
        &mut self,
    ) -> BTreeMap<ShardName, Option<crate::report::InSyncClaim>> {
        self.refresh_pending_claims();
        std::mem::take(&mut self.claims_changed)
            .into_iter()
            .map(|shard| {
                let claim = self.claim_of(&shard).cloned();
                (shard, claim)
            })
            .collect()
    }

    /// The claim of `shard` as [`DataPlane::claims`] gives it: of the last of its primaries
    /// here (one, but for a unit handover between two on one node).
    fn claim_of(&self, shard: &ShardName) -> Option<&crate::report::InSyncClaim> {
        let from = ReplicaId {
            shard: shard.clone(),
            unit: UnitName::default(),
        };
        self.claim_cache
            .range(from..)
            .take_while(|(id, _)| &id.shard == shard)
            .last()
            .map(|(_, claim)| claim)
    }

    /// Refreshes the claims of replicas touched but not yet processed by
    /// [`DataPlane::take_output`] (which refreshes the ones it processes).
    fn refresh_pending_claims(&mut self) {
        let pending = std::mem::take(&mut self.dirty);
        for id in &pending {
            self.refresh_claim(id);
        }
        self.dirty = pending;
    }

    /// Brings replica `id`'s cached claim and its place in `awaiting_disk` up to date.
    pub(super) fn refresh_claim(&mut self, id: &ReplicaId) {
        match self.compute_claim(id) {
            Err(Unchanged) => {}
            Ok(Some(claim)) => {
                if self.claim_cache.get(id) != Some(&claim) {
                    self.claim_cache.insert(id.clone(), claim);
                    self.claims_changed.insert(id.shard.clone());
                }
            }
            Ok(None) => {
                if self.claim_cache.remove(id).is_some() {
                    self.claims_changed.insert(id.shard.clone());
                }
            }
        }
        if self.awaits_disk_now(id) {
            if !self.awaiting_disk.contains(id) {
                self.awaiting_disk.insert(id.clone());
            }
        } else {
            self.awaiting_disk.remove(id);
        }
    }

    /// The claim of replica `id` if it is a primary here at the view's epoch (`Err` when it is
    /// the cached one); a change of its verified STANDBYs takes the next sequence number.
    fn compute_claim(
        &mut self,
        id: &ReplicaId,
    ) -> Result<Option<crate::report::InSyncClaim>, Unchanged> {
        let Some(slot) = self.slots.get(id) else {
            return Ok(None);
        };
        let SlotRole::Primary(primary) = &slot.role else {
            return Ok(None);
        };
        let Some(view) = self.view.shards.get(&id.shard) else {
            return Ok(None);
        };
        if view.epoch != primary.epoch || primary.passive {
            return Ok(None);
        }
        let verified = || claimable_standbys(primary);
        if !self.claim_logs.contains_key(&id.shard) {
            self.claim_logs
                .insert(id.shard.clone(), ClaimLog::default());
        }
        let log = self.claim_logs.get_mut(&id.shard).expect("inserted above");
        if let Some(cached) = self.claim_cache.get(id) {
            // The common case, every commit: nothing moved, nothing to allocate.
            let unchanged = log.epoch == primary.epoch
                && log.seq >= view.in_sync_claim
                && cached.epoch == primary.epoch
                && cached.version == view.version
                && cached.seq == log.seq
                && log.units.as_ref() == Some(&cached.units)
                && cached.units.iter().eq(verified());
            if unchanged {
                return Err(Unchanged);
            }
        }
        let verified: BTreeSet<UnitName> = verified().cloned().collect();
        if log.epoch != primary.epoch {
            *log = ClaimLog {
                epoch: primary.epoch,
                ..ClaimLog::default()
            };
        }
        if log.seq < view.in_sync_claim {
            // Claims of this epoch applied that this log does not know of (it started
            // over): the next one must be newer.
            log.seq = view.in_sync_claim;
            log.units = None;
        }
        if log.units.as_ref() != Some(&verified) {
            log.seq += 1;
            log.units = Some(verified.clone());
        }
        for unit in &verified {
            if log.last_claimed.get(unit) != Some(&log.seq) {
                log.last_claimed.insert(unit.clone(), log.seq);
            }
        }
        Ok(Some(crate::report::InSyncClaim {
            epoch: primary.epoch,
            version: view.version,
            units: verified,
            seq: log.seq,
        }))
    }

    /// Whether replica `id` is a primary whose commits may wait for the local disk now (see
    /// [`DataPlane::awaits_local_durability`]).
    fn awaits_disk_now(&self, id: &ReplicaId) -> bool {
        let Some(SlotRole::Primary(primary)) = self.slots.get(id).map(|slot| &slot.role) else {
            return false;
        };
        self.view
            .shards
            .get(&id.shard)
            .is_none_or(|view| !has_wait_set(primary, view, self.claim_logs.get(&id.shard)))
    }

    /// Whether a commit of a primary here may be waiting for the local disk: one whose wait set
    /// is empty (no STANDBY in step or in sync), so that its sync commits and flushes are
    /// answered only once the replica file's msync reports their version durable (see
    /// `safe_version`). A primary without a view counts too. While this is false, every
    /// acknowledged write is also held by a STANDBY, and the daemon may sync its replica files
    /// less often: that costs no commit any latency, only what a crash of every replica's node
    /// at once could lose. Kept per replica as its inputs touch it, so this costs no walk over
    /// every shard.
    pub fn awaits_local_durability(&self) -> bool {
        self.awaiting_disk.iter().any(|id| !self.dirty.contains(id))
            || self.dirty.iter().any(|id| self.awaits_disk_now(id))
    }

    /// Checks the cached claims and `awaiting_disk` against a walk over every replica: where
    /// they differ, a change reached a replica without marking it touched. For the
    /// simulation, after [`DataPlane::take_claims_change`]; `Err` says what differs.
    pub fn check_claim_cache(&self) -> Result<(), String> {
        for (id, slot) in &self.slots {
            let awaiting = self.awaits_disk_now(id);
            if awaiting != self.awaiting_disk.contains(id) && !self.dirty.contains(id) {
                return Err(format!(
                    "replica {id:?}: awaits the disk {awaiting}, the cache says {}",
                    !awaiting
                ));
            }
            let SlotRole::Primary(primary) = &slot.role else {
                if self.claim_cache.contains_key(id) {
                    return Err(format!(
                        "replica {id:?} is no primary but has a cached claim"
                    ));
                }
                continue;
            };
            let claimable = self
                .view
                .shards
                .get(&id.shard)
                .is_some_and(|view| view.epoch == primary.epoch && !primary.passive);
            let cached = self.claim_cache.get(id);
            if claimable != cached.is_some() {
                return Err(format!(
                    "replica {id:?}: claimable {claimable}, cached claim {cached:?}"
                ));
            }
            if let Some(cached) = cached {
                let verified: BTreeSet<&UnitName> = claimable_standbys(primary).collect();
                let view = &self.view.shards[&id.shard];
                let log = self.claim_logs.get(&id.shard);
                let current = cached.units.iter().collect::<BTreeSet<_>>() == verified
                    && cached.version == view.version
                    && log
                        .is_some_and(|log| log.seq == cached.seq && log.seq >= view.in_sync_claim);
                if !current {
                    return Err(format!(
                        "replica {id:?}: cached claim {cached:?} is stale (verified {verified:?})"
                    ));
                }
            }
        }
        if let Some(id) = self
            .claim_cache
            .keys()
            .find(|id| !self.slots.contains_key(id))
        {
            return Err(format!("replica {id:?} is gone but has a cached claim"));
        }
        Ok(())
    }
}
