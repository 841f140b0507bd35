//! Conversion of the admin protocol's codes (`tandem_core::AdminCode`) to and from their
//! protobuf form (`proto/admin.proto`). Both matches are exhaustive: a new code does not
//! compile until it has its wire number.

use tandem_core::AdminCode;

use crate::admin as wire;

/// An admin code on the wire.
pub fn encode_admin_code(code: AdminCode) -> wire::AdminCode {
    match code {
        AdminCode::BadRequest => wire::AdminCode::AdminBadRequest,
        AdminCode::NotFound => wire::AdminCode::AdminNotFound,
        AdminCode::NoOp => wire::AdminCode::AdminNoOp,
        AdminCode::Invalid => wire::AdminCode::AdminInvalid,
        AdminCode::Busy => wire::AdminCode::AdminBusy,
        AdminCode::NoStandby => wire::AdminCode::AdminNoStandby,
        AdminCode::NotInSync => wire::AdminCode::AdminNotInSync,
        AdminCode::NotLeader => wire::AdminCode::AdminNotLeader,
        AdminCode::NoLeader => wire::AdminCode::AdminNoLeader,
        AdminCode::NotCommitted => wire::AdminCode::AdminNotCommitted,
        AdminCode::Refused => wire::AdminCode::AdminRefused,
        AdminCode::Failed => wire::AdminCode::AdminFailed,
        AdminCode::InProgress => wire::AdminCode::AdminInProgress,
        AdminCode::Aborted => wire::AdminCode::AdminAborted,
        AdminCode::Timeout => wire::AdminCode::AdminTimeout,
        AdminCode::ShuttingDown => wire::AdminCode::AdminShuttingDown,
        AdminCode::Lagged => wire::AdminCode::AdminLagged,
        AdminCode::Unknown => wire::AdminCode::AdminUnknown,
    }
}

/// An admin code from the wire; a number this build does not know (from a newer tandemd) is
/// [`AdminCode::Unknown`].
pub fn decode_admin_code(code: i32) -> AdminCode {
    match wire::AdminCode::try_from(code).unwrap_or(wire::AdminCode::AdminUnknown) {
        wire::AdminCode::AdminBadRequest => AdminCode::BadRequest,
        wire::AdminCode::AdminNotFound => AdminCode::NotFound,
        wire::AdminCode::AdminNoOp => AdminCode::NoOp,
        wire::AdminCode::AdminInvalid => AdminCode::Invalid,
        wire::AdminCode::AdminBusy => AdminCode::Busy,
        wire::AdminCode::AdminNoStandby => AdminCode::NoStandby,
        wire::AdminCode::AdminNotInSync => AdminCode::NotInSync,
        wire::AdminCode::AdminNotLeader => AdminCode::NotLeader,
        wire::AdminCode::AdminNoLeader => AdminCode::NoLeader,
        wire::AdminCode::AdminNotCommitted => AdminCode::NotCommitted,
        wire::AdminCode::AdminRefused => AdminCode::Refused,
        wire::AdminCode::AdminFailed => AdminCode::Failed,
        wire::AdminCode::AdminInProgress => AdminCode::InProgress,
        wire::AdminCode::AdminAborted => AdminCode::Aborted,
        wire::AdminCode::AdminTimeout => AdminCode::Timeout,
        wire::AdminCode::AdminShuttingDown => AdminCode::ShuttingDown,
        wire::AdminCode::AdminLagged => AdminCode::Lagged,
        wire::AdminCode::AdminUnknown => AdminCode::Unknown,
    }
}

/// An admin error answer.
pub fn error_response(code: AdminCode, message: impl Into<String>) -> wire::AdminResponse {
    wire::AdminResponse {
        kind: Some(wire::admin_response::Kind::Error(wire::AdminError {
            code: encode_admin_code(code) as i32,
            message: message.into(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_admin_code_crosses_the_wire_as_itself() {
        for code in AdminCode::ALL {
            assert_eq!(decode_admin_code(encode_admin_code(code) as i32), code);
        }
        assert_eq!(decode_admin_code(4242), AdminCode::Unknown);
        assert_eq!(decode_admin_code(-1), AdminCode::Unknown);
    }
}
