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

/// An admin error's code: its enum `kind`, or, when that is unset (a tandemd from before it),
/// its name; what this build does not know (from a newer tandemd) is [`AdminCode::Unknown`].
pub fn decode_admin_code(error: &wire::AdminError) -> AdminCode {
    match wire::AdminCode::try_from(error.kind).unwrap_or(wire::AdminCode::AdminUnknown) {
        wire::AdminCode::AdminUnknown => {
            AdminCode::from_name(&error.code).unwrap_or(AdminCode::Unknown)
        }
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
    }
}

/// An admin error answer.
pub fn error_response(code: AdminCode, message: impl Into<String>) -> wire::AdminResponse {
    wire::AdminResponse {
        kind: Some(wire::admin_response::Kind::Error(wire::AdminError {
            code: code.name().to_owned(),
            message: message.into(),
            kind: encode_admin_code(code) as i32,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_admin_code_crosses_the_wire_as_itself_by_enum_and_by_name() {
        let error = |kind: i32, code: &str| wire::AdminError {
            code: code.into(),
            kind,
            message: String::new(),
        };
        for code in AdminCode::ALL {
            let Some(wire::admin_response::Kind::Error(sent)) = error_response(code, "m").kind
            else {
                panic!("an error answer")
            };
            assert_eq!(decode_admin_code(&sent), code);
            // From a tandemd before the enum: the name alone.
            assert_eq!(decode_admin_code(&error(0, code.name())), code);
        }
        assert_eq!(decode_admin_code(&error(4242, "")), AdminCode::Unknown);
        assert_eq!(
            decode_admin_code(&error(-1, "from_the_future")),
            AdminCode::Unknown
        );
    }
}
