//! Peer envelopes (prost) and the raft-rs messages they carry (rust-protobuf), from a frame
//! payload an untrusted peer controls.
//!
//! Properties:
//! - an envelope that decodes re-encodes to bytes that decode to an equal envelope, and
//!   re-encoding is stable (encode ∘ decode is the identity on its own output);
//! - the body converts to a peer message (`tandem_node::wire::decode`) or is refused, never a
//!   panic; a tandem message (heartbeat, grant, report) that converts converts back to the same
//!   body;
//! - a `raft` body that decodes as a raft message re-encodes (`encode_raft_message`) to bytes
//!   that decode to an equal message, with stable bytes from then on. Unknown fields are left
//!   out of the comparison: rust-protobuf keeps them in a hash map, so their order on the wire
//!   and their empty-versus-absent bookkeeping change across a round trip while no field raft
//!   reads does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protobuf::{Message as _, UnknownFields};
use raft::eraftpb::Message;
use tandem_proto::peer::envelope::Body;
use tandem_proto::Message as _;

/// Drops the unknown fields of a raft message and of every message nested in it. (Nested
/// messages are created where absent, alike on both sides of a comparison.)
fn known_fields_only(mut message: Message) -> Message {
    *message.mut_unknown_fields() = UnknownFields::new();
    for entry in message.mut_entries().iter_mut() {
        *entry.mut_unknown_fields() = UnknownFields::new();
    }
    let snapshot = message.mut_snapshot();
    *snapshot.mut_unknown_fields() = UnknownFields::new();
    let metadata = snapshot.mut_metadata();
    *metadata.mut_unknown_fields() = UnknownFields::new();
    *metadata.mut_conf_state().mut_unknown_fields() = UnknownFields::new();
    message
}

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = tandem_proto::decode_envelope(data) else {
        return;
    };
    let bytes = envelope.encode_to_vec();
    assert_eq!(bytes.len(), envelope.encoded_len());
    let again = tandem_proto::decode_envelope(bytes.as_slice()).expect("a re-encoded envelope decodes");
    assert_eq!(again, envelope, "envelope changed across encode/decode");
    assert_eq!(
        again.encode_to_vec(),
        bytes,
        "envelope encoding is not stable"
    );

    if let Ok(message) = tandem_node::wire::decode(envelope.body.clone()) {
        if !matches!(message, tandem_node::PeerMessage::Raft(_)) {
            let body = tandem_node::wire::encode(&message);
            let again = tandem_node::wire::decode(Some(body)).expect("a re-encoded peer message converts");
            assert_eq!(again, message, "peer message changed across encode/decode");
        }
    }

    if let Some(Body::Raft(raft_bytes)) = &envelope.body {
        if let Ok(message) = tandem_raft::decode_raft_message(raft_bytes) {
            let message = known_fields_only(message);
            let encoded = tandem_raft::encode_raft_message(&message);
            let decoded = tandem_raft::decode_raft_message(&encoded)
                .expect("a re-encoded raft message decodes");
            let decoded = known_fields_only(decoded);
            assert_eq!(
                decoded, message,
                "raft message changed across encode/decode"
            );
            assert_eq!(
                tandem_raft::encode_raft_message(&decoded),
                encoded,
                "raft message encoding is not stable"
            );
        }
    }
});
