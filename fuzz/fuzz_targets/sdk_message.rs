//! The unit-to-agent protocol (`proto/sdk.proto`), both directions: what a unit process sends
//! its daemon (untrusted: any program that knows the socket may write to it) and what a daemon
//! sends the SDK.
//!
//! Properties, for each of `decode_unit_message` and `decode_agent_message` on the input: what
//! decodes re-encodes to bytes that decode to an equal value, re-encoding those is stable, and
//! a fault report's severity either converts or is refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_proto::sdk::unit_to_agent;
use tandem_proto::Message;

fn round_trip<M, E>(data: &[u8], decode: fn(&[u8]) -> Result<M, E>) -> Option<M>
where
    M: Message + PartialEq + std::fmt::Debug,
    E: std::fmt::Debug,
{
    let value = decode(data).ok()?;
    let bytes = value.encode_to_vec();
    let again = decode(&bytes).expect("a re-encoded SDK message decodes");
    assert_eq!(again, value, "SDK message changed across encode/decode");
    assert_eq!(again.encode_to_vec(), bytes, "SDK message encoding is not stable");
    Some(value)
}

fuzz_target!(|data: &[u8]| {
    if let Some(message) = round_trip(data, |bytes| tandem_proto::decode_unit_message(bytes)) {
        if let Some(unit_to_agent::Kind::Fault(fault)) = message.kind {
            let _ = tandem_proto::state_wire::decode_severity(fault.severity);
        }
    }
    round_trip(data, |bytes| tandem_proto::decode_agent_message(bytes));
});
