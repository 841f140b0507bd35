//! Fencing by leases: an ACTIVE unit may act only while its node holds a lease from the current
//! quorum.
//!
//! **Agent side** ([`AgentLease`]). Every heartbeat an agent sends to the leader (about one
//! an interval, riding with its answer to the leader's own heartbeat) carries its local send
//! time. The leader answers with a grant only while a quorum confirmed its
//! leadership within the last `freshness` (see [`QuorumClock`]); the grant rides with the
//! leader's next heartbeat to the node while the node's previous grant runs long
//! ([`GrantBook`]). A grant makes the lease valid
//! until `send time + lease` on the agent's own clock, measured from the *send*, so message
//! delays only shorten it. A grant also carries the leader's last log index (`floor`): the
//! lease counts only once the agent has applied that far, so an agent coming back from a
//! partition never lets a unit act on an assignment the cluster already moved.
//!
//! **Leader side** ([`QuorumClock`]). The leader asks a quorum to confirm it (raft read-index)
//! every Raft heartbeat period and at least every heartbeat interval, remembering when it
//! asked. A confirmation proves that a
//! majority heard from it after that time, so no other leader can have been elected before it.
//! A confirmation older than `freshness` still allows a grant, shortened by the excess
//! (`age − freshness`): a leader whose loop runs late (a loaded host) keeps its nodes leased
//! for less time instead of not at all, and the bound below holds all the same.
//!
//! **Why at most one ACTIVE.** Let ρ bound the rate difference of any two clocks
//! ([`DRIFT_PPM`], 2 %). A grant to node X answers a heartbeat X sent at s and the leader
//! received at r ≥ s, while its last quorum confirmation (asked at t0) was at most `freshness`
//! old. A leader elected later gets votes from a majority, one of which acknowledged the old
//! leader after t0, so its election is after t0; it then gives X a full `node_timeout` of grace
//! before declaring X down, and promotes X's shards elsewhere only after that. X's units stop
//! acting by s + lease (X's clock). The promotion happens no earlier than t0 + node_timeout, and
//! X stops no later than t0 + freshness + lease, both in real time within ρ. (A grant made
//! at g ≥ r, which may be the leader's next heartbeat, when the confirmation was
//! `age = g − t0 > freshness` old on the leader's clock, is shortened by `age − freshness`:
//! X stops by s + lease − age + freshness ≤ t0 + freshness + lease, as s ≤ r ≤ g = t0 + age.)
//! Hence the rule checked by [`check_fencing_timers`]:
//! `(freshness + lease) · (1 + ρ) / (1 − ρ) < node_timeout`. The same leader declaring X down
//! waits node_timeout after r ≥ s, which the rule covers too. When X's connection to the
//! leader closed (its daemon died), the leader waits only `lease · (1 + ρ) / (1 − ρ)` after the
//! last heartbeat it received from X ([`lease_expiry_bound`]): it grants only in answer to
//! heartbeats, so every grant X holds from it ends by then; and never less than the fencing
//! bound after it became leader, which covers its predecessors' grants. The unit process enforces its
//! lease itself (the SDK quiesces its ACTIVE roles at the deadline), so a paused or killed
//! daemon cannot keep a unit ACTIVE. The roles stay suspended in the unit; a lease given to
//! it again would resume them, so the agent withholds it while the unit may still believe in
//! an ACTIVE that the log it applied moved away (see `agent`): the floor makes the agent see
//! every move made before the grant, and the unit hears of them before it may act again.

use std::time::Duration;

use crate::time::Time;

/// The clock-drift bound tandem assumes: over any interval, the clocks of two nodes advance at
/// rates that differ by at most 2 % (20,000 parts per million). Real quartz clocks drift by
/// about 0.01 %; the margin covers NTP slewing and virtual machines.
pub const DRIFT_PPM: u64 = 20_000;

/// The longest a follower waits between two of its heartbeats while it knows a leader:
/// 1¼ intervals. It sends one with its answer to a leader's heartbeat once
/// [`heartbeat_ride_gap`] passed since its last, and on its own only when this long passed
/// (see `tandem_node`'s `Node::heartbeat`).
pub fn heartbeat_gap_max(heartbeat_interval: Duration) -> Duration {
    heartbeat_interval + heartbeat_interval / 4
}

/// How long after its last heartbeat a follower's next one may ride with its answer to a
/// leader's heartbeat: ¾ of an interval, so that at the default Raft timers (a leader
/// heartbeat every 40 to 50 ms, an interval of 50 ms) every one carries it, and with shorter
/// Raft heartbeats (a tuned cluster) one in two or three.
pub fn heartbeat_ride_gap(heartbeat_interval: Duration) -> Duration {
    heartbeat_interval - heartbeat_interval / 4
}

/// Checks that leases fence in time: `(freshness + lease) · (1 + ρ)/(1 − ρ) < node_timeout`,
/// where `freshness` is the heartbeat interval. Also asks the lease to outlive two of the
/// longest gaps between a follower's heartbeats ([`heartbeat_gap_max`], 2½ intervals), so one
/// lost heartbeat does not fence a healthy node.
pub fn check_fencing_timers(
    heartbeat_interval: Duration,
    lease: Duration,
    node_timeout: Duration,
) -> Result<(), String> {
    let two_gaps = heartbeat_gap_max(heartbeat_interval) * 2;
    if lease <= two_gaps {
        return Err(format!(
            "lease_ms ({}) must be more than 2.5 × heartbeat_interval_ms ({}) = {} ms: a \
             node's heartbeats may be 1.25 intervals apart, and a single lost heartbeat would \
             otherwise fence a healthy node",
            lease.as_millis(),
            heartbeat_interval.as_millis(),
            two_gaps.as_secs_f64() * 1000.0
        ));
    }
    let fenced_by = (heartbeat_interval + lease).as_micros() * u128::from(1_000_000 + DRIFT_PPM)
        / u128::from(1_000_000 - DRIFT_PPM);
    if fenced_by >= node_timeout.as_micros() {
        // (fencing_bound rounds this up to whole milliseconds.)
        return Err(format!(
            "node_timeout_ms ({}) must exceed (heartbeat_interval_ms + lease_ms) × {:.3} = {:.1} ms, \
             so that a node's units have stopped acting before its shards move elsewhere \
             (clock drift bound {} %)",
            node_timeout.as_millis(),
            (1_000_000 + DRIFT_PPM) as f64 / (1_000_000 - DRIFT_PPM) as f64,
            fenced_by as f64 / 1000.0,
            DRIFT_PPM / 10_000
        ));
    }
    Ok(())
}

/// Grants an agent remembers: enough to bridge the time until the newest one's floor is applied.
pub const GRANTS_KEPT: usize = 8;

/// How long after a moment every lease granted up to that moment (plus one freshness window)
/// has surely run out, whatever the clocks: `(heartbeat_interval + lease) · (1+ρ)/(1−ρ)`,
/// rounded up to the millisecond. A new leader waits this long before judging a node it has
/// not heard from: no lease an earlier leader granted can still let that node's units act.
pub fn fencing_bound(heartbeat_interval: Duration, lease: Duration) -> Duration {
    drift_bound(heartbeat_interval + lease)
}

/// How long, on the leader's clock, after it received a node's heartbeat every lease it
/// granted that node up to then has surely run out: `lease · (1+ρ)/(1−ρ)`, rounded up to the
/// millisecond. A grant answers a heartbeat the node sent before the leader received it, and
/// covers `lease` from that send on the node's clock (less any shortening). The leader judges
/// a node whose connection to it closed (a killed daemon) down this long after its last
/// heartbeat instead of a whole `node_timeout` after it (see [`crate::LivenessTracker`]).
pub fn lease_expiry_bound(lease: Duration) -> Duration {
    drift_bound(lease)
}

/// `length · (1+ρ)/(1−ρ)`, rounded up to the millisecond: the longest `length` on one clock
/// can last on another.
fn drift_bound(length: Duration) -> Duration {
    let micros =
        length.as_micros() * u128::from(1_000_000 + DRIFT_PPM) / u128::from(1_000_000 - DRIFT_PPM);
    let millis = micros.div_ceil(1000);
    Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
}

/// An agent's lease.
///
/// Every grant is valid on its own: it covers the lease (less the grant's shortening) from
/// its heartbeat's send time once its floor is applied. Under a steady write load the newest
/// grant's floor is usually a few entries ahead of what the agent has applied, so the agent
/// keeps the last few grants and the lease runs until the latest deadline among those whose
/// floor it has applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLease {
    /// Length of a lease.
    lease: Duration,
    /// The newest grants, oldest first: (heartbeat send time, the leader's last index, the
    /// grant's deadline).
    grants: std::collections::VecDeque<(Time, u64, Time)>,
}

impl AgentLease {
    /// No lease yet.
    pub fn new(lease: Duration) -> Self {
        Self {
            lease,
            grants: std::collections::VecDeque::new(),
        }
    }

    /// The leader granted the heartbeat sent at `sent_at` (this agent's clock) when its log
    /// ended at `floor`, `shortened_by` less than a whole lease (see [`QuorumClock::grant`]).
    /// A grant for an older heartbeat than the newest kept is ignored.
    pub fn on_grant(&mut self, sent_at: Time, floor: u64, shortened_by: Duration) {
        if self
            .grants
            .back()
            .is_some_and(|(newest, _, _)| *newest >= sent_at)
        {
            return;
        }
        if self.grants.len() == GRANTS_KEPT {
            self.grants.pop_front();
        }
        let until = sent_at + self.lease.saturating_sub(shortened_by);
        self.grants.push_back((sent_at, floor, until));
    }

    /// The newest grant kept: its heartbeat's send time and its floor (for logs).
    pub fn newest_grant(&self) -> Option<(Time, u64)> {
        self.grants
            .back()
            .map(|(sent_at, floor, _)| (*sent_at, *floor))
    }

    /// Until when the lease runs, if it runs at all, for an agent that applied `applied`:
    /// the latest deadline of the grants whose floor it applied.
    pub fn valid_until(&self, now: Time, applied: u64) -> Option<Time> {
        self.grants
            .iter()
            .filter(|(_, floor, _)| *floor <= applied)
            .map(|(_, _, until)| *until)
            .max()
            .filter(|until| now < *until)
    }

    /// Whether the lease is valid at `now` for an agent that applied up to `applied`.
    pub fn is_valid(&self, now: Time, applied: u64) -> bool {
        self.valid_until(now, applied).is_some()
    }
}

/// The leader's record of its latest quorum confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumClock {
    /// How old a confirmation may be for the leader to grant leases.
    freshness: Duration,
    /// When the newest completed confirmation was asked for.
    confirmed_asked_at: Option<Time>,
}

impl QuorumClock {
    /// A clock that has seen no confirmation.
    pub fn new(freshness: Duration) -> Self {
        Self {
            freshness,
            confirmed_asked_at: None,
        }
    }

    /// A confirmation asked for at `asked_at` completed.
    pub fn confirmed(&mut self, asked_at: Time) {
        self.confirmed_asked_at = Some(
            self.confirmed_asked_at
                .map_or(asked_at, |t| t.max(asked_at)),
        );
    }

    /// How old the newest confirmation is at `now` (since it was asked for), if there is one.
    pub fn age(&self, now: Time) -> Option<Duration> {
        self.confirmed_asked_at
            .map(|asked| now.saturating_since(asked))
    }

    /// Whether the leader may grant a lease of length `lease` at `now`, and if so by how much
    /// the grant is shortened: by the age of the newest confirmation beyond `freshness`. No
    /// grant once that leaves nothing of the lease (or before any confirmation).
    pub fn grant(&self, now: Time, lease: Duration) -> Option<Duration> {
        let age = now.saturating_since(self.confirmed_asked_at?);
        let shortened_by = age.saturating_sub(self.freshness);
        (shortened_by < lease).then_some(shortened_by)
    }
}

/// The leader's book of lease grants to the other nodes: which grants wait to ride with its
/// next heartbeat, and until about when each node's last grant runs.
///
/// A grant answers a node's heartbeat. Sent at once it costs the leader a write and the node a
/// wake-up for every heartbeat; held until the leader's next heartbeat to that node (its next
/// quorum ask, at most a Raft heartbeat period away) it shares that write. The wait only
/// shortens what is left of the lease when it arrives (a lease runs from the heartbeat's send
/// time), so a grant waits only while the node's previous one still has more than half a lease
/// to run, and while the leader keeps up (the caller's judgement: in `tandem_node`, a newest
/// quorum confirmation fresh enough for a whole grant and no log entries in flight).
/// Otherwise (a new leader, a node back, a late heartbeat, a busy leader or busy voters, a
/// failover under way) it goes at once: under load the next ask may be a long pass away, and
/// a heartbeat may have waited long before the leader read it, which the estimate of what is
/// left of the last grant does not see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantBook {
    /// Length of a lease.
    lease: Duration,
    nodes: std::collections::BTreeMap<crate::NodeId, GrantSlot>,
}

/// One node's entry in a [`GrantBook`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct GrantSlot {
    /// About when (the leader's clock) the last grant sent to the node runs out: its
    /// heartbeat's arrival plus the lease less the grant's shortening. An over-estimate by the
    /// heartbeat's transit time, which the half-lease margin absorbs.
    until: Option<Time>,
    /// The heartbeat whose grant waits for the next ask: its send time (the node's clock) and
    /// its arrival (the leader's).
    due: Option<(Time, Time)>,
}

/// What to do with a grant for a heartbeat just received (see [`GrantBook::on_heartbeat`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantTiming {
    /// Send it now: the node's last grant runs out within half a lease, there is none, or
    /// the leader does not keep up.
    Now,
    /// Kept; it leaves with the leader's next heartbeat ([`GrantBook::take_due`]).
    WithNextAsk,
}

impl GrantBook {
    /// A book with nothing granted yet, for leases of length `lease`.
    pub fn new(lease: Duration) -> Self {
        Self {
            lease,
            nodes: std::collections::BTreeMap::new(),
        }
    }

    /// A heartbeat from `node`, sent at `sent_at` on its clock, arrived at `now`: whether its
    /// grant goes now or waits. `keeping_up`: a grant made now would be whole (see
    /// [`QuorumClock::grant`]). A newer heartbeat replaces one whose grant still waits.
    pub fn on_heartbeat(
        &mut self,
        now: Time,
        node: crate::NodeId,
        sent_at: Time,
        keeping_up: bool,
    ) -> GrantTiming {
        let half = self.lease / 2;
        let slot = self.nodes.entry(node).or_default();
        let runs_long = slot
            .until
            .is_some_and(|until| until.saturating_since(now) > half);
        if runs_long && keeping_up {
            if slot
                .due
                .is_none_or(|(due_sent_at, _)| due_sent_at < sent_at)
            {
                slot.due = Some((sent_at, now));
            }
            GrantTiming::WithNextAsk
        } else {
            slot.due = None;
            GrantTiming::Now
        }
    }

    /// The leader sent `node` a grant for a heartbeat that arrived at `received_at`, cut by
    /// `shortened_by`.
    pub fn sent(&mut self, node: crate::NodeId, received_at: Time, shortened_by: Duration) {
        let until = received_at + self.lease.saturating_sub(shortened_by);
        let slot = self.nodes.entry(node).or_default();
        slot.until = Some(slot.until.map_or(until, |before| before.max(until)));
    }

    /// `node`'s connection to the leader closed (its daemon died or restarted): its waiting
    /// grant answers a heartbeat of a process that is gone, and its next grant goes at once.
    pub fn forget(&mut self, node: crate::NodeId) {
        self.nodes.remove(&node);
    }

    /// The grants waiting for the leader's next heartbeat, taken: (node, the heartbeat's send
    /// time, its arrival). The caller grants each (or not, if the node is judged down
    /// meanwhile) and records what it sent with [`GrantBook::sent`].
    pub fn take_due(&mut self) -> Vec<(crate::NodeId, Time, Time)> {
        self.nodes
            .iter_mut()
            .filter_map(|(node, slot)| {
                slot.due
                    .take()
                    .map(|(sent_at, received_at)| (*node, sent_at, received_at))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn defaults_and_tuned_timers_fence_in_time() {
        check_fencing_timers(MS(50), MS(200), MS(300)).unwrap();
        check_fencing_timers(MS(10), MS(50), MS(80)).unwrap();
        let error = check_fencing_timers(MS(50), MS(250), MS(300)).unwrap_err();
        assert!(
            error.contains("node_timeout_ms (300) must exceed"),
            "{error}"
        );
        // A follower's heartbeats may be 62.5 ms apart: the lease outlives two such gaps.
        let error = check_fencing_timers(MS(50), MS(125), MS(300)).unwrap_err();
        assert!(error.contains("= 125 ms"), "{error}");
        check_fencing_timers(MS(50), MS(126), MS(300)).unwrap();
        let error = check_fencing_timers(MS(50), MS(100), MS(300)).unwrap_err();
        assert!(error.contains("more than 2.5 ×"), "{error}");
    }

    #[test]
    fn the_fencing_bound_covers_drift() {
        // (50 + 200) × 1.02 / 0.98 = 260.2 ms, rounded up.
        assert_eq!(fencing_bound(MS(50), MS(200)), MS(261));
        assert!(fencing_bound(MS(10), MS(50)) < MS(80));
        // 200 × 1.02 / 0.98 = 208.2 ms, rounded up; always inside the node timeout the
        // fencing rule accepts.
        assert_eq!(lease_expiry_bound(MS(200)), MS(209));
        assert!(lease_expiry_bound(MS(50)) < fencing_bound(MS(10), MS(50)));
    }

    #[test]
    fn a_lease_runs_from_the_send_time_and_needs_the_floor_applied() {
        let mut lease = AgentLease::new(MS(200));
        assert!(!lease.is_valid(Time::ZERO, 0));
        lease.on_grant(Time::from_millis(100), 7, Duration::ZERO);
        assert!(
            !lease.is_valid(Time::from_millis(150), 6),
            "floor not applied yet"
        );
        assert_eq!(
            lease.valid_until(Time::from_millis(150), 7),
            Some(Time::from_millis(300))
        );
        assert!(!lease.is_valid(Time::from_millis(300), 7), "expired");
        // An older grant arriving late changes nothing.
        lease.on_grant(Time::from_millis(50), 1, Duration::ZERO);
        assert_eq!(
            lease.valid_until(Time::from_millis(150), 7),
            Some(Time::from_millis(300))
        );
        lease.on_grant(Time::from_millis(250), 9, Duration::ZERO);
        assert_eq!(
            lease.valid_until(Time::from_millis(260), 7),
            Some(Time::from_millis(300)),
            "until floor 9 is applied, the grant at 100 still counts"
        );
        assert!(!lease.is_valid(Time::from_millis(300), 7));
        assert!(lease.is_valid(Time::from_millis(440), 9));
    }

    #[test]
    fn a_leader_grants_whole_leases_with_a_fresh_quorum_and_shorter_ones_with_an_older_one() {
        let lease = MS(200);
        let mut clock = QuorumClock::new(MS(50));
        assert_eq!(clock.grant(Time::ZERO, lease), None, "no confirmation yet");
        clock.confirmed(Time::from_millis(100));
        assert_eq!(
            clock.grant(Time::from_millis(150), lease),
            Some(Duration::ZERO)
        );
        assert_eq!(clock.grant(Time::from_millis(151), lease), Some(MS(1)));
        assert_eq!(clock.grant(Time::from_millis(349), lease), Some(MS(199)));
        assert_eq!(
            clock.grant(Time::from_millis(350), lease),
            None,
            "nothing of the lease is left"
        );
        clock.confirmed(Time::from_millis(90));
        assert_eq!(
            clock.grant(Time::from_millis(151), lease),
            Some(MS(1)),
            "an older confirmation does not help"
        );
    }

    #[test]
    fn a_shortened_grant_ends_no_later_than_a_whole_one_made_at_the_confirmation() {
        // The confirmation was asked at t0 = 100; a heartbeat sent at 180 reached the leader
        // at 220 (age 120, shortened by 70): the lease ends at 180 + 130 = 310, before
        // t0 + freshness + lease = 350, the bound the fencing rule covers.
        let mut clock = QuorumClock::new(MS(50));
        clock.confirmed(Time::from_millis(100));
        let shortened_by = clock.grant(Time::from_millis(220), MS(200)).unwrap();
        let mut lease = AgentLease::new(MS(200));
        lease.on_grant(Time::from_millis(180), 3, shortened_by);
        assert_eq!(
            lease.valid_until(Time::from_millis(200), 3),
            Some(Time::from_millis(310))
        );
        // A later whole grant extends it; an earlier grant that ends later still counts.
        lease.on_grant(Time::from_millis(200), 4, Duration::ZERO);
        assert_eq!(
            lease.valid_until(Time::from_millis(250), 4),
            Some(Time::from_millis(400))
        );
        lease.on_grant(Time::from_millis(260), 5, MS(150));
        assert_eq!(
            lease.valid_until(Time::from_millis(270), 5),
            Some(Time::from_millis(400)),
            "the latest deadline among applied grants"
        );
    }

    #[test]
    fn a_grant_waits_for_the_next_ask_only_while_the_last_one_runs_long() {
        let n2 = crate::NodeId(2);
        let at = Time::from_millis;
        let mut book = GrantBook::new(MS(200));
        // No grant sent yet (a new leader): at once.
        assert_eq!(book.on_heartbeat(at(0), n2, at(0), true), GrantTiming::Now);
        book.sent(n2, at(0), Duration::ZERO);
        // 60 ms later the last grant still runs 140 ms: the next one waits.
        assert_eq!(
            book.on_heartbeat(at(60), n2, at(59), true),
            GrantTiming::WithNextAsk
        );
        // A newer heartbeat replaces it; an older one does not.
        book.on_heartbeat(at(70), n2, at(69), true);
        book.on_heartbeat(at(71), n2, at(50), true);
        assert_eq!(book.take_due(), vec![(n2, at(69), at(70))]);
        assert!(book.take_due().is_empty(), "taken once");
        book.sent(n2, at(70), MS(10));
        // The last grant runs until 260: at 160 exactly half a lease is left, so at once.
        assert_eq!(
            book.on_heartbeat(at(159), n2, at(158), true),
            GrantTiming::WithNextAsk
        );
        assert_eq!(
            book.on_heartbeat(at(160), n2, at(160), true),
            GrantTiming::Now
        );
        assert!(
            book.take_due().is_empty(),
            "a grant sent now drops the waiting one"
        );
        // A node whose connection closed: nothing waits, and its next grant goes at once.
        book.on_heartbeat(at(170), n2, at(170), true);
        book.forget(n2);
        assert!(book.take_due().is_empty());
        assert_eq!(
            book.on_heartbeat(at(171), n2, at(171), true),
            GrantTiming::Now
        );
        // An older, longer grant sent late does not pull `until` back.
        book.sent(n2, at(160), Duration::ZERO);
        book.sent(n2, at(100), Duration::ZERO);
        assert_eq!(
            book.on_heartbeat(at(250), n2, at(250), true),
            GrantTiming::WithNextAsk,
            "runs until 360"
        );
        // A leader whose confirmations are old grants at once, however long the last runs.
        assert_eq!(
            book.on_heartbeat(at(251), n2, at(251), false),
            GrantTiming::Now
        );
        assert!(
            book.take_due().is_empty(),
            "a grant sent now drops the waiting one"
        );
    }
}
