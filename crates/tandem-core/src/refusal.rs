//! Why an administrative request was not carried out: [`Refusal`] with its [`AdminCode`].
//! The codes cross the admin wire as `admin.proto`'s `AdminCode`; tools match on them, so
//! each is stable.

/// Why an administrative request cannot be (or was not) carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// Why, for programs.
    pub code: AdminCode,
    /// One sentence for a human: what is wrong and what to do.
    pub message: String,
}

impl Refusal {
    /// A refusal with `code` and `message`.
    pub fn new(code: AdminCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

/// The machine-readable reason of an admin error. Nothing was changed unless the code says
/// otherwise ([`AdminCode::Failed`], [`AdminCode::Aborted`], [`AdminCode::Timeout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdminCode {
    /// The request was malformed (a bad frame, an unknown kind, a bad name).
    BadRequest,
    /// It names a node, service, unit or shard the cluster does not have.
    NotFound,
    /// It asks for what already is (e.g. locking a locked unit).
    NoOp,
    /// It is not allowed in the current state (e.g. unlock-instantiation of an unlocked unit).
    Invalid,
    /// The target is busy: another operation on it is under way, or (a client send) its shard
    /// holds as many messages as it may until an ACTIVE takes them. Retry later.
    Busy,
    /// A switchover found no STANDBY to switch to.
    NoStandby,
    /// A switchover's target STANDBY is not in sync.
    NotInSync,
    /// The daemon asked is not the leader (and does not forward this request).
    NotLeader,
    /// No leader is known or reachable: the cluster may be electing one.
    NoLeader,
    /// The leader could not commit the request's entries.
    NotCommitted,
    /// Refused when applied: the state changed between validation and commit.
    Refused,
    /// Carried out, but the outcome it waits for failed.
    Failed,
    /// An operation is still in progress; its outcome is not known yet.
    InProgress,
    /// The operation was aborted (the leader changed or the target went away).
    Aborted,
    /// No answer within the request's time (nothing is known of its outcome).
    Timeout,
    /// The daemon is shutting down: retry another node.
    ShuttingDown,
    /// An event stream's reader fell behind and missed events: reconnect.
    Lagged,
    /// A code this build does not know (sent by a newer daemon).
    Unknown,
}

impl AdminCode {
    /// Every code, in wire order.
    pub const ALL: [AdminCode; 18] = [
        AdminCode::BadRequest,
        AdminCode::NotFound,
        AdminCode::NoOp,
        AdminCode::Invalid,
        AdminCode::Busy,
        AdminCode::NoStandby,
        AdminCode::NotInSync,
        AdminCode::NotLeader,
        AdminCode::NoLeader,
        AdminCode::NotCommitted,
        AdminCode::Refused,
        AdminCode::Failed,
        AdminCode::InProgress,
        AdminCode::Aborted,
        AdminCode::Timeout,
        AdminCode::ShuttingDown,
        AdminCode::Lagged,
        AdminCode::Unknown,
    ];

    /// The code of a stable name ([`AdminCode::name`]), if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.name() == name)
    }

    /// Its stable name, in `snake_case`.
    pub fn name(self) -> &'static str {
        match self {
            AdminCode::BadRequest => "bad_request",
            AdminCode::NotFound => "not_found",
            AdminCode::NoOp => "no_op",
            AdminCode::Invalid => "invalid",
            AdminCode::Busy => "busy",
            AdminCode::NoStandby => "no_standby",
            AdminCode::NotInSync => "not_in_sync",
            AdminCode::NotLeader => "not_leader",
            AdminCode::NoLeader => "no_leader",
            AdminCode::NotCommitted => "not_committed",
            AdminCode::Refused => "refused",
            AdminCode::Failed => "failed",
            AdminCode::InProgress => "in_progress",
            AdminCode::Aborted => "aborted",
            AdminCode::Timeout => "timeout",
            AdminCode::ShuttingDown => "shutting_down",
            AdminCode::Lagged => "lagged",
            AdminCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for AdminCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
