//! Admin requests and responses (prost) from bytes an admin client or a forwarding daemon
//! controls.
//!
//! Properties, for each of `decode_admin_request` and `decode_admin_response` on the input:
//! what decodes re-encodes to bytes that decode to an equal value, and re-encoding those is
//! stable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_proto::Message;

fn round_trip<M, E>(data: &[u8], decode: fn(&[u8]) -> Result<M, E>)
where
    M: Message + PartialEq + std::fmt::Debug,
    E: std::fmt::Debug,
{
    let Ok(value) = decode(data) else {
        return;
    };
    let bytes = value.encode_to_vec();
    assert_eq!(bytes.len(), value.encoded_len());
    let again = decode(&bytes).expect("re-encoded admin message decodes");
    assert_eq!(again, value, "admin message changed across encode/decode");
    assert_eq!(
        again.encode_to_vec(),
        bytes,
        "admin message encoding is not stable"
    );
}

fuzz_target!(|data: &[u8]| {
    round_trip(data, tandem_proto::decode_admin_request);
    round_trip(data, tandem_proto::decode_admin_response);
});
