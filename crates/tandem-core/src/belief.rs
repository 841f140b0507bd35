//! What a unit believes about its own roles, as its SDK keeps it.
//!
//! The SDK (crate `tandem`) and the simulation's units share this bookkeeping, and the
//! simulation's "at most one ACTIVE" invariant is judged on it: a unit *acts* for a shard when
//! it believes it is ACTIVE (or QUIESCING, still finishing work) and its lease has not run out
//! on its own clock. The judgement is conservative: a unit counts as ACTIVE from the moment an
//! `assign(ACTIVE)` reaches it, and keeps counting until a demotion hook has completed.

use std::collections::BTreeMap;

use crate::agent::UnitCommand;
use crate::cluster::Role;
use crate::ids::ShardName;
use crate::time::Time;

/// A unit's roles and lease, as the unit knows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitBelief {
    /// Role and epoch per shard.
    roles: BTreeMap<ShardName, (Role, u64)>,
    /// Until when the unit may act (its agent's lease), on the unit's clock.
    lease_until: Option<Time>,
    /// The unit reported a fault and has not been reset since: it takes no ACTIVE role.
    faulted: bool,
}

impl UnitBelief {
    /// Nothing held, no lease.
    pub fn new() -> Self {
        Self::default()
    }

    /// A request arrived (before the application's hook runs).
    pub fn on_request(&mut self, command: &UnitCommand) {
        match command {
            UnitCommand::Batch(items) => {
                for item in items {
                    self.on_request(item);
                }
            }
            UnitCommand::Assign {
                shard,
                role: Role::Active,
                epoch,
            } if !self.faulted => {
                self.roles.insert(shard.clone(), (Role::Active, *epoch));
            }
            UnitCommand::Quiesce { shard, epoch } => {
                if let Some((role, _)) = self.roles.get(shard) {
                    if role.is_acting() {
                        self.roles.insert(shard.clone(), (Role::Quiescing, *epoch));
                    }
                }
            }
            _ => {}
        }
    }

    /// The application's hook for `command` completed successfully.
    pub fn on_done(&mut self, command: &UnitCommand) {
        match command {
            UnitCommand::Batch(items) => {
                for item in items {
                    self.on_done(item);
                }
            }
            UnitCommand::Assign { shard, role, epoch } => {
                // A unit that reported a fault does not take up work again before its reset.
                let role = if self.faulted && role.is_acting() {
                    Role::Quiesced
                } else {
                    *role
                };
                self.roles.insert(shard.clone(), (role, *epoch));
            }
            UnitCommand::Quiesce { shard, epoch } => {
                self.roles.insert(shard.clone(), (Role::Quiesced, *epoch));
            }
            UnitCommand::Remove { shard } => {
                self.roles.remove(shard);
            }
            UnitCommand::Reset => self.faulted = false,
            UnitCommand::Health => {}
        }
    }

    /// The agent sent a new lease deadline (`None`: no lease).
    pub fn on_lease(&mut self, until: Option<Time>) {
        self.lease_until = until;
    }

    /// The agent sent a new lease deadline, received at `now` on the unit's clock. Returns the
    /// shards the unit holds ACTIVE that it may act for again: its lease had run out and is
    /// valid again. Stream messages that reached it while it could not act were dropped, so
    /// it asks for the stream again for these (a new delivery round).
    pub fn renew_lease(&mut self, until: Option<Time>, now: Time) -> Vec<(ShardName, u64)> {
        let was_valid = self.has_lease(now);
        self.lease_until = until;
        if was_valid || !self.has_lease(now) || self.faulted {
            return Vec::new();
        }
        self.roles
            .iter()
            .filter(|(_, (role, _))| *role == Role::Active)
            .map(|(shard, (_, epoch))| (shard.clone(), *epoch))
            .collect()
    }

    /// The unit reported a fault: it stops acting at once, and takes no ACTIVE role until it
    /// has been reset (or replaced by a new instance).
    pub fn on_fault(&mut self) {
        self.faulted = true;
        for (role, _) in self.roles.values_mut() {
            if role.is_acting() {
                *role = Role::Quiesced;
            }
        }
    }

    /// Whether the unit's lease is valid at `now` (on its own clock).
    pub fn has_lease(&self, now: Time) -> bool {
        self.lease_until.is_some_and(|until| now < until)
    }

    /// Whether the unit may act for `shard` at `now`.
    pub fn is_acting(&self, shard: &ShardName, now: Time) -> bool {
        self.has_lease(now)
            && self
                .roles
                .get(shard)
                .is_some_and(|(role, _)| role.is_acting())
    }

    /// The role the unit holds for `shard` as it knows it, with the epoch.
    pub fn role(&self, shard: &ShardName) -> Option<(Role, u64)> {
        self.roles.get(shard).copied()
    }

    /// Every role held.
    pub fn roles(&self) -> impl Iterator<Item = (&ShardName, Role, u64)> + '_ {
        self.roles
            .iter()
            .map(|(shard, (role, epoch))| (shard, *role, *epoch))
    }

    /// The lease deadline, if any.
    pub fn lease_until(&self) -> Option<Time> {
        self.lease_until
    }

    /// Shards the unit believes ACTIVE or QUIESCING but may not act for any more at `now`
    /// (the lease ran out): the SDK tells the application to quiesce them.
    pub fn fenced(&self, now: Time) -> Vec<ShardName> {
        if self.has_lease(now) {
            return Vec::new();
        }
        self.roles
            .iter()
            .filter(|(_, (role, _))| role.is_acting())
            .map(|(shard, _)| shard.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_from_the_request_until_the_demotion_is_done_and_only_with_a_lease() {
        let shard: ShardName = "s0".into();
        let mut belief = UnitBelief::new();
        let activate = UnitCommand::Assign {
            shard: shard.clone(),
            role: Role::Active,
            epoch: 3,
        };
        belief.on_request(&activate);
        assert!(
            !belief.is_acting(&shard, Time::from_millis(1)),
            "no lease yet"
        );
        belief.on_lease(Some(Time::from_millis(100)));
        assert!(belief.is_acting(&shard, Time::from_millis(1)));
        assert!(
            !belief.is_acting(&shard, Time::from_millis(100)),
            "lease ran out"
        );
        assert_eq!(belief.fenced(Time::from_millis(100)), vec![shard.clone()]);
        belief.on_done(&activate);
        let quiesce = UnitCommand::Quiesce {
            shard: shard.clone(),
            epoch: 3,
        };
        belief.on_request(&quiesce);
        assert_eq!(belief.role(&shard), Some((Role::Quiescing, 3)));
        assert!(
            belief.is_acting(&shard, Time::from_millis(50)),
            "still finishing"
        );
        belief.on_done(&quiesce);
        assert!(!belief.is_acting(&shard, Time::from_millis(50)));
        belief.on_request(&activate);
        belief.on_fault();
        assert!(!belief.is_acting(&shard, Time::from_millis(50)));
        // An ACTIVE hook already running when the fault was reported does not bring it back.
        belief.on_done(&activate);
        assert!(!belief.is_acting(&shard, Time::from_millis(50)));
        belief.on_done(&UnitCommand::Reset);
        belief.on_request(&activate);
        assert!(
            belief.is_acting(&shard, Time::from_millis(50)),
            "reset clears the fault"
        );
    }
}
