//! Narrowing and summarising a status: the shard filter (`--shard GLOB`, `--service NAME`),
//! what makes a shard healthy, and the counts of a summary.
//!
//! `tandemd` and `tandemctl` share this. The daemon narrows its answer while it builds it, so a
//! summary of a big cluster costs it one pass over the shards and no message per shard; a
//! client does the same with the whole answer of a daemon that does not know the filters
//! ([`narrow`]).

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use tandem_proto::admin::{
    ServiceSummary, ShardStatus, Status, StatusRequest, StatusSummary, UnitRoles,
};

/// Whether `text` matches `pattern`, where `*` matches any run of characters (none too), `?`
/// exactly one character, and every other character itself (no escapes, no classes).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // The last `*` seen and the text position it is tried from: on a mismatch, that star
    // takes one more character and matching resumes after it. Linear in practice, and never
    // worse than pattern × text.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some('?') => {
                p += 1;
                t += 1;
            }
            Some(c) if *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// Which shards a status request asks for: by name (a glob) and by service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardFilter {
    /// `--shard GLOB`; `None`: every name.
    pub glob: Option<String>,
    /// `--service NAME`; `None`: every service.
    pub service: Option<String>,
}

impl ShardFilter {
    /// The filter of `request` (an empty field filters nothing).
    pub fn of(request: &StatusRequest) -> Self {
        Self {
            glob: Some(request.shard_glob.clone()).filter(|glob| !glob.is_empty()),
            service: Some(request.service.clone()).filter(|service| !service.is_empty()),
        }
    }

    /// Whether it filters nothing.
    pub fn is_empty(&self) -> bool {
        self.glob.is_none() && self.service.is_none()
    }

    /// Whether units and shards of `service` are asked for.
    pub fn wants_service(&self, service: &str) -> bool {
        self.service
            .as_deref()
            .is_none_or(|wanted| wanted == service)
    }

    /// Whether shard `name` of `service` is asked for.
    pub fn matches(&self, name: &str, service: &str) -> bool {
        self.wants_service(service)
            && self
                .glob
                .as_deref()
                .is_none_or(|glob| glob_match(glob, name))
    }

    /// The filter in words, as the options that give it (`--shard 'a*' --service s`).
    pub fn describe(&self) -> String {
        let mut words = Vec::new();
        if let Some(glob) = &self.glob {
            words.push(format!("--shard '{glob}'"));
        }
        if let Some(service) = &self.service {
            words.push(format!("--service {service}"));
        }
        words.join(" ")
    }
}

/// Whether shards of a service of `model` (`2n`, `n+m`, ...) should have a STANDBY.
pub fn wants_standby(model: &str) -> bool {
    matches!(model, "2n" | "n+m")
}

/// What is wrong with a shard, in the order a summary names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// No unit holds ACTIVE.
    NoActive,
    /// The model wants a STANDBY and no unit holds one.
    NoStandby,
    /// STANDBYs exist, none committed as in sync.
    NotInSync,
    /// A switchover or other handover is under way.
    Handover,
    /// A unit is QUIESCING or QUIESCED.
    Quiescing,
    /// A unit has not confirmed its role at the shard's current version.
    Unconfirmed,
}

impl Problem {
    /// A few words for a human.
    pub fn text(self) -> &'static str {
        match self {
            Problem::NoActive => "no ACTIVE",
            Problem::NoStandby => "no STANDBY",
            Problem::NotInSync => "no in-sync STANDBY",
            Problem::Handover => "handover in progress",
            Problem::Quiescing => "QUIESCING",
            Problem::Unconfirmed => "unconfirmed role",
        }
    }
}

/// What decides a shard's health, counted from its roles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardFacts {
    /// Its model wants a STANDBY (2n, n+m).
    pub wants_standby: bool,
    /// A handover is in progress.
    pub handover: bool,
    /// ACTIVE roles held, and of those confirmed.
    pub actives: u32,
    pub actives_confirmed: u32,
    /// STANDBY roles held; of those, committed as in sync; of those, confirmed.
    pub standbys: u32,
    pub standbys_in_sync: u32,
    pub standbys_in_sync_confirmed: u32,
    /// QUIESCING and QUIESCED roles held.
    pub quiescing: u32,
    /// Roles not confirmed.
    pub unconfirmed: u32,
}

impl ShardFacts {
    /// Facts of a shard of a service with `model`, before its roles are added.
    pub fn new(model: &str, handover: bool) -> Self {
        Self {
            wants_standby: wants_standby(model),
            handover,
            ..Self::default()
        }
    }

    /// Counts one role held: `role` as status spells it (`ACTIVE`, `STANDBY`, `QUIESCING`,
    /// `QUIESCED`), whether its unit confirmed it, and whether the unit is in the shard's
    /// in-sync set.
    pub fn add_role(&mut self, role: &str, confirmed: bool, in_sync: bool) {
        match role {
            "ACTIVE" => {
                self.actives += 1;
                self.actives_confirmed += u32::from(confirmed);
            }
            "STANDBY" => {
                self.standbys += 1;
                if in_sync {
                    self.standbys_in_sync += 1;
                    self.standbys_in_sync_confirmed += u32::from(confirmed);
                }
            }
            _ => self.quiescing += 1,
        }
        self.unconfirmed += u32::from(!confirmed);
    }

    /// The facts of a shard as a status answer shows it.
    pub fn of_status(shard: &ShardStatus, model: &str) -> Self {
        let mut facts = Self::new(model, !shard.handover.is_empty());
        for role in &shard.roles {
            facts.add_role(
                &role.role,
                role.confirmed,
                shard.in_sync.contains(&role.unit),
            );
        }
        facts
    }

    /// What is wrong, in order; empty when the shard is healthy.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.actives == 0 {
            problems.push(Problem::NoActive);
        }
        if self.wants_standby && self.standbys == 0 {
            problems.push(Problem::NoStandby);
        }
        if self.wants_standby && self.standbys > 0 && self.standbys_in_sync == 0 {
            problems.push(Problem::NotInSync);
        }
        if self.handover {
            problems.push(Problem::Handover);
        }
        if self.quiescing > 0 {
            problems.push(Problem::Quiescing);
        }
        if self.unconfirmed > 0 {
            problems.push(Problem::Unconfirmed);
        }
        problems
    }

    /// Nothing is wrong.
    pub fn healthy(&self) -> bool {
        self.actives > 0
            && (!self.wants_standby || self.standbys_in_sync > 0)
            && !self.handover
            && self.quiescing == 0
            && self.unconfirmed == 0
    }

    /// A confirmed ACTIVE and a confirmed, in-sync STANDBY.
    pub fn protected(&self) -> bool {
        self.actives_confirmed > 0 && self.standbys_in_sync_confirmed > 0
    }
}

/// Adds shards up into a [`StatusSummary`].
#[derive(Debug, Default)]
pub struct SummaryBuilder {
    shards_total: u64,
    shards: u64,
    healthy: u64,
    services: Vec<ServiceSummary>,
    index: BTreeMap<String, usize>,
}

impl SummaryBuilder {
    /// A summary of a cluster with `shards_total` shards.
    pub fn new(shards_total: u64) -> Self {
        Self {
            shards_total,
            ..Self::default()
        }
    }

    /// Declares a service and its units (in this order in the summary). A service not
    /// declared is added when its first shard is.
    pub fn service<'a>(
        &mut self,
        name: &str,
        model: &str,
        units: impl IntoIterator<Item = &'a str>,
    ) {
        let index = self.index_of(name);
        let summary = &mut self.services[index];
        summary.model = model.to_owned();
        for unit in units {
            if !summary.units.iter().any(|roles| roles.unit == unit) {
                summary.units.push(UnitRoles {
                    unit: unit.to_owned(),
                    ..UnitRoles::default()
                });
            }
        }
    }

    fn index_of(&mut self, service: &str) -> usize {
        if let Some(index) = self.index.get(service) {
            return *index;
        }
        self.services.push(ServiceSummary {
            name: service.to_owned(),
            ..ServiceSummary::default()
        });
        self.index
            .insert(service.to_owned(), self.services.len() - 1);
        self.services.len() - 1
    }

    /// Counts one matching shard of `service`: `facts` as [`ShardFacts::new`] made them, and
    /// its roles as (unit, role, confirmed, in the in-sync set), which are added to the facts
    /// on the way. Returns the facts.
    pub fn add<'a>(
        &mut self,
        service: &str,
        mut facts: ShardFacts,
        roles: impl IntoIterator<Item = (&'a str, &'a str, bool, bool)>,
    ) -> ShardFacts {
        let index = self.index_of(service);
        let summary = &mut self.services[index];
        for (unit, role, confirmed, in_sync) in roles {
            facts.add_role(role, confirmed, in_sync);
            let position = match summary.units.iter().position(|held| held.unit == unit) {
                Some(position) => position,
                None => {
                    summary.units.push(UnitRoles {
                        unit: unit.to_owned(),
                        ..UnitRoles::default()
                    });
                    summary.units.len() - 1
                }
            };
            let held = &mut summary.units[position];
            match role {
                "ACTIVE" => held.active += 1,
                "STANDBY" => held.standby += 1,
                _ => held.quiescing += 1,
            }
            held.unconfirmed += u64::from(!confirmed);
        }
        let healthy = facts.healthy();
        summary.shards += 1;
        summary.healthy += u64::from(healthy);
        summary.active += u64::from(facts.actives_confirmed > 0);
        summary.in_sync += u64::from(facts.protected());
        summary.handover += u64::from(facts.handover);
        summary.unconfirmed += u64::from(facts.unconfirmed > 0);
        self.shards += 1;
        self.healthy += u64::from(healthy);
        facts
    }

    /// The summary of the answer to `request`; `summarised` and `unlisted` say what the
    /// answer left out.
    pub fn finish(self, request: &StatusRequest, summarised: bool, unlisted: u64) -> StatusSummary {
        StatusSummary {
            shards_total: self.shards_total,
            shards: self.shards,
            healthy: self.healthy,
            summarised,
            unlisted,
            services: self.services,
            request: Some(request.clone()),
        }
    }
}

/// Whether `status` answers `request` as it was sent: its summary says the daemon read
/// the filters. Otherwise (a daemon from before the filters, or one that forwarded the
/// request without them) it holds every shard, to [`narrow`].
pub fn answers(status: &Status, request: &StatusRequest) -> bool {
    status
        .summary
        .as_ref()
        .is_some_and(|summary| summary.request.as_ref() == Some(request))
}

/// Whether an answer with `matched` shards is to be a summary, by `request`.
pub fn summarises(request: &StatusRequest, matched: u64) -> bool {
    request
        .summarise_above
        .is_some_and(|above| matched > u64::from(above))
}

/// Does to a whole status what a daemon that knows the filters does while it builds one:
/// keeps the shards, units and data `request` asks for, counts `summary`, and, for a summary,
/// keeps only the unhealthy shards (at most `shards_max`). For the answer of a daemon from
/// before the filters existed (its answer has no `summary`).
pub fn narrow(status: &mut Status, request: &StatusRequest) {
    let filter = ShardFilter::of(request);
    let models: BTreeMap<String, String> = status
        .services
        .iter()
        .map(|service| (service.name.clone(), service.model.clone()))
        .collect();
    let mut builder = SummaryBuilder::new(status.shards.len() as u64);
    for service in &status.services {
        if filter.wants_service(&service.name) {
            builder.service(
                &service.name,
                &service.model,
                service.units.iter().map(String::as_str),
            );
        }
    }
    let shards = std::mem::take(&mut status.shards);
    let mut kept = Vec::new();
    for shard in shards {
        if !filter.matches(&shard.name, &shard.service) {
            continue;
        }
        let model = models.get(&shard.service).map_or("", String::as_str);
        let facts = builder.add(
            &shard.service,
            ShardFacts::new(model, !shard.handover.is_empty()),
            shard.roles.iter().map(|role| {
                (
                    role.unit.as_str(),
                    role.role.as_str(),
                    role.confirmed,
                    shard.in_sync.contains(&role.unit),
                )
            }),
        );
        kept.push((shard, facts.healthy()));
    }
    let summarised = summarises(request, kept.len() as u64);
    let limit = match request.shards_max {
        0 => usize::MAX,
        max => max as usize,
    };
    let mut unlisted = 0u64;
    status.shards = if summarised {
        let mut listed = Vec::new();
        for (shard, healthy) in kept {
            if healthy {
                continue;
            }
            if listed.len() < limit {
                listed.push(shard);
            } else {
                unlisted += 1;
            }
        }
        listed
    } else {
        kept.into_iter().map(|(shard, _)| shard).collect()
    };
    let names: BTreeSet<&str> = status
        .shards
        .iter()
        .map(|shard| shard.name.as_str())
        .collect();
    for service in &mut status.services {
        if summarised {
            service.shards.clear();
        } else {
            let service_name = service.name.clone();
            service
                .shards
                .retain(|shard| filter.matches(shard, &service_name));
        }
    }
    status
        .units
        .retain(|unit| filter.wants_service(&unit.service));
    if summarised {
        status.replicas.clear();
        status.sessions.clear();
    } else {
        status
            .replicas
            .retain(|replica| names.contains(replica.shard.as_str()));
        status
            .sessions
            .retain(|session| names.contains(session.shard.as_str()));
    }
    status.summary = Some(builder.finish(request, summarised, unlisted));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_proto::admin::{RoleStatus, ServiceStatus, UnitRef};

    #[test]
    fn glob_literals_must_match_exactly() {
        assert!(glob_match("counter-0", "counter-0"));
        assert!(!glob_match("counter-0", "counter-00"));
        assert!(!glob_match("counter-00", "counter-0"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
    }

    #[test]
    fn glob_question_mark_is_one_character() {
        assert!(glob_match("s-?", "s-1"));
        assert!(!glob_match("s-?", "s-"));
        assert!(!glob_match("s-?", "s-12"));
        assert!(glob_match("s-??", "s-12"));
        assert!(glob_match("?", "é"));
    }

    #[test]
    fn glob_star_is_any_run() {
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("svc-*", "svc-"));
        assert!(glob_match("svc-*", "svc-17"));
        assert!(!glob_match("svc-*", "svc"));
        assert!(glob_match("*-7", "svc-7"));
        assert!(!glob_match("*-7", "svc-17"));
        assert!(glob_match("*-1*", "svc-17"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
        assert!(glob_match("**", "x"));
        assert!(glob_match("a*?", "ab"));
        assert!(!glob_match("a*?", "a"));
    }

    #[test]
    fn glob_backtracks_to_the_last_star() {
        // The first `*-` would match too early; the star must give back.
        assert!(glob_match("*-0", "a-0-b-0"));
        assert!(glob_match("a*aab", "aaaaaab"));
        assert!(!glob_match("a*aab", "aaaaaa"));
        // A long run does not blow up.
        let text = "a".repeat(10_000);
        assert!(!glob_match("*a*a*a*b", &text));
    }

    #[test]
    fn filter_combines_name_and_service() {
        let request = StatusRequest {
            shard_glob: "s-1*".into(),
            service: "svc".into(),
            ..StatusRequest::default()
        };
        let filter = ShardFilter::of(&request);
        assert!(filter.matches("s-12", "svc"));
        assert!(!filter.matches("s-12", "other"));
        assert!(!filter.matches("s-2", "svc"));
        assert_eq!(filter.describe(), "--shard 's-1*' --service svc");
        assert!(ShardFilter::of(&StatusRequest::default()).is_empty());
        assert!(ShardFilter::default().matches("x", "y"));
    }

    fn role(unit: &str, role: &str, confirmed: bool) -> RoleStatus {
        RoleStatus {
            unit: unit.into(),
            node: format!("node-of-{unit}"),
            role: role.into(),
            confirmed,
        }
    }

    fn shard(name: &str, roles: Vec<RoleStatus>, in_sync: &[&str], handover: &str) -> ShardStatus {
        let place = |role: &RoleStatus| UnitRef {
            unit: role.unit.clone(),
            node: role.node.clone(),
        };
        ShardStatus {
            name: name.into(),
            service: "svc".into(),
            active: roles.iter().find(|r| r.role == "ACTIVE").map(place),
            standbys: roles
                .iter()
                .filter(|r| r.role == "STANDBY")
                .map(place)
                .collect(),
            epoch: 1,
            version: 1,
            roles,
            handover: handover.into(),
            in_sync: in_sync.iter().map(|unit| unit.to_string()).collect(),
            admitted_permille: None,
        }
    }

    #[test]
    fn health_follows_the_model() {
        let healthy = shard(
            "s-0",
            vec![role("a", "ACTIVE", true), role("b", "STANDBY", true)],
            &["b"],
            "",
        );
        assert!(ShardFacts::of_status(&healthy, "2n").healthy());
        assert!(ShardFacts::of_status(&healthy, "2n").protected());
        let not_in_sync = shard(
            "s-1",
            vec![role("a", "ACTIVE", true), role("b", "STANDBY", true)],
            &[],
            "",
        );
        let facts = ShardFacts::of_status(&not_in_sync, "n+m");
        assert_eq!(facts.problems(), vec![Problem::NotInSync]);
        assert!(!facts.healthy() && !facts.protected());
        // Without a STANDBY: unhealthy in 2n, healthy where the model wants none.
        let alone = shard("s-2", vec![role("a", "ACTIVE", true)], &[], "");
        assert_eq!(
            ShardFacts::of_status(&alone, "2n").problems(),
            vec![Problem::NoStandby]
        );
        assert!(ShardFacts::of_status(&alone, "none").healthy());
        assert!(ShardFacts::of_status(&alone, "n-way-active").healthy());
        let nothing = shard("s-3", vec![], &[], "");
        assert_eq!(
            ShardFacts::of_status(&nothing, "2n").problems(),
            vec![Problem::NoActive, Problem::NoStandby]
        );
        let moving = shard(
            "s-4",
            vec![role("a", "QUIESCING", true), role("b", "STANDBY", false)],
            &["b"],
            "switchover from a to b",
        );
        assert_eq!(
            ShardFacts::of_status(&moving, "2n").problems(),
            vec![
                Problem::NoActive,
                Problem::Handover,
                Problem::Quiescing,
                Problem::Unconfirmed
            ]
        );
    }

    fn cluster() -> Status {
        let mut shards = Vec::new();
        for index in 0..60 {
            let confirmed = index % 20 != 7;
            shards.push(shard(
                &format!("s-{index}"),
                vec![role("a", "ACTIVE", true), role("b", "STANDBY", confirmed)],
                &["b"],
                "",
            ));
        }
        let mut other = shard("o-0", vec![role("c", "ACTIVE", true)], &[], "");
        other.service = "solo".into();
        shards.push(other);
        Status {
            services: vec![
                ServiceStatus {
                    name: "svc".into(),
                    model: "2n".into(),
                    units: vec!["a".into(), "b".into()],
                    shards: shards[..60].iter().map(|s| s.name.clone()).collect(),
                },
                ServiceStatus {
                    name: "solo".into(),
                    model: "none".into(),
                    units: vec!["c".into(), "d".into()],
                    shards: vec!["o-0".into()],
                },
            ],
            shards,
            ..Status::default()
        }
    }

    #[test]
    fn narrow_summarises_above_the_threshold() {
        let mut status = cluster();
        let request = StatusRequest {
            summarise_above: Some(50),
            shards_max: 2,
            ..StatusRequest::default()
        };
        narrow(&mut status, &request);
        let summary = status.summary.as_ref().unwrap();
        assert_eq!(summary.shards_total, 61);
        assert_eq!(summary.shards, 61);
        assert_eq!(summary.healthy, 58);
        assert!(summary.summarised);
        // s-7, s-27, s-47 are unhealthy; two are listed.
        assert_eq!(summary.unlisted, 1);
        let listed: Vec<&str> = status.shards.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(listed, vec!["s-7", "s-27"]);
        assert!(status
            .services
            .iter()
            .all(|service| service.shards.is_empty()));
        let svc = &summary.services[0];
        assert_eq!((svc.name.as_str(), svc.model.as_str()), ("svc", "2n"));
        assert_eq!(
            (svc.shards, svc.healthy, svc.active, svc.in_sync),
            (60, 57, 60, 57)
        );
        assert_eq!(svc.unconfirmed, 3);
        assert_eq!(svc.units[0].unit, "a");
        assert_eq!((svc.units[0].active, svc.units[0].standby), (60, 0));
        assert_eq!((svc.units[1].standby, svc.units[1].unconfirmed), (60, 3));
        let solo = &summary.services[1];
        assert_eq!((solo.shards, solo.healthy, solo.in_sync), (1, 1, 0));
        // A unit holding nothing is listed with zeros.
        assert_eq!(solo.units[1].unit, "d");
        assert_eq!(solo.units[1].active, 0);
    }

    #[test]
    fn an_answer_tells_whether_the_daemon_read_the_request() {
        let request = StatusRequest {
            shard_glob: "s-*".into(),
            summarise_above: Some(50),
            ..StatusRequest::default()
        };
        let whole = cluster();
        assert!(!answers(&whole, &request), "no summary: an old daemon");
        let mut narrowed = cluster();
        narrow(&mut narrowed, &request);
        assert!(answers(&narrowed, &request));
        // A follower that dropped the fields forwarded an empty request.
        let mut forwarded = cluster();
        narrow(&mut forwarded, &StatusRequest::default());
        assert!(!answers(&forwarded, &request));
        assert!(answers(&forwarded, &StatusRequest::default()));
    }

    #[test]
    fn narrow_filters_without_summarising_below_the_threshold() {
        let mut status = cluster();
        let request = StatusRequest {
            shard_glob: "s-1?".into(),
            summarise_above: Some(50),
            ..StatusRequest::default()
        };
        narrow(&mut status, &request);
        let summary = status.summary.as_ref().unwrap();
        assert!(!summary.summarised);
        assert_eq!(
            (summary.shards_total, summary.shards, summary.healthy),
            (61, 10, 10)
        );
        assert_eq!(status.shards.len(), 10);
        assert_eq!(status.services[0].shards.len(), 10);
        assert!(status.services[1].shards.is_empty());

        let mut status = cluster();
        let request = StatusRequest {
            service: "solo".into(),
            ..StatusRequest::default()
        };
        narrow(&mut status, &request);
        assert_eq!(status.shards.len(), 1);
        assert_eq!(status.summary.as_ref().unwrap().services.len(), 1);

        let mut status = cluster();
        let request = StatusRequest {
            shard_glob: "nothing-*".into(),
            summarise_above: Some(0),
            ..StatusRequest::default()
        };
        narrow(&mut status, &request);
        let summary = status.summary.as_ref().unwrap();
        assert_eq!((summary.shards, summary.summarised), (0, false));
        assert!(status.shards.is_empty());
    }
}
