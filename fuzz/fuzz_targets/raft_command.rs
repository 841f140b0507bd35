//! The Raft log command and cluster snapshot codec (`tandem_proto::state_wire`), from bytes in a log
//! entry or a snapshot.
//!
//! Properties:
//! - a command that decodes re-encodes (`encode_command`) to bytes that decode to an equal
//!   command, and those bytes are stable; an input fails with `EmptyCommand` exactly when it
//!   is a well-formed protobuf command with no kind, with `Invalid` only when it is a
//!   well-formed protobuf command (holding a value no tandem writes), and with `Decode` exactly
//!   when it is not a protobuf command at all;
//! - a cluster state that decodes re-encodes (`encode_state`) to bytes that decode to an equal
//!   state, those bytes are stable, every node is filed under its own id and came from a
//!   record of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_proto::state_wire::{decode_command, decode_state, encode_command, encode_state, CodecError};

fuzz_target!(|data: &[u8]| {
    let wire = tandem_proto::decode_command(data);
    match decode_command(data) {
        Ok(command) => {
            assert!(wire.as_ref().is_ok_and(|wire| wire.kind.is_some()));
            let bytes = encode_command(&command);
            let again = decode_command(&bytes).expect("a re-encoded command decodes");
            assert_eq!(again, command, "command changed across encode/decode");
            assert_eq!(
                encode_command(&again),
                bytes,
                "command encoding is not stable"
            );
        }
        Err(CodecError::EmptyCommand) => {
            assert!(wire.as_ref().is_ok_and(|wire| wire.kind.is_none()));
        }
        Err(CodecError::Invalid(_)) => {
            assert!(wire.as_ref().is_ok_and(|wire| wire.kind.is_some()));
        }
        Err(CodecError::Decode(_)) => assert!(wire.is_err()),
    }

    let snapshot = tandem_proto::decode_cluster_snapshot(data);
    match decode_state(data) {
        Ok(state) => {
            let snapshot = snapshot.expect("state decodes but the snapshot protobuf does not");
            assert!(state.nodes.len() <= snapshot.nodes.len());
            for (id, record) in &state.nodes {
                assert_eq!(*id, record.id, "node filed under another id");
                assert!(
                    snapshot.nodes.iter().any(|wire| wire.id == id.0
                        && wire.up == record.up
                        && wire.changed_at_index == record.changed_at_index),
                    "node {id:?} is in no record of the input"
                );
            }
            let bytes = encode_state(&state);
            let again = decode_state(&bytes).expect("a re-encoded state decodes");
            assert_eq!(again, state, "state changed across encode/decode");
            assert_eq!(encode_state(&again), bytes, "state encoding is not stable");
        }
        Err(CodecError::Decode(_)) => assert!(snapshot.is_err()),
        Err(_) => assert!(snapshot.is_ok(), "only a well-formed snapshot is refused as invalid"),
    }
});
