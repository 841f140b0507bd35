//! The data plane's wire decoders: a peer's data message (`proto/data.proto`, on the data
//! connections between daemons) and a unit's data call, tandemd's answer and a delivery
//! (`proto/sdk.proto`, on a unit's socket; calls come from any program that can write to it).
//!
//! Properties: what converts to tandem-core's types converts back to a protobuf that converts
//! again to an equal value (the conversion is lossless on what it accepts), and nothing panics;
//! what it refuses is refused with an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_proto::data_wire::{decode_message, encode_message};
use tandem_proto::sdk_wire::{
    decode_answer, decode_call, decode_delivery, encode_answer, encode_call, encode_delivery,
};
use tandem_proto::{data, sdk, Message};

fuzz_target!(|data: &[u8]| {
    if let Ok(wire) = data::DataMessage::decode(data) {
        if let Ok(message) = decode_message(wire) {
            let again = decode_message(encode_message(&message)).expect("re-encoded decodes");
            assert_eq!(again, message, "data message changed across encode/decode");
        }
    }
    if let Ok(wire) = sdk::DataCall::decode(data) {
        if let Ok((id, request)) = decode_call(wire) {
            let again = decode_call(encode_call(id, request.clone())).expect("re-encoded decodes");
            assert_eq!(again, (id, request), "data call changed across encode/decode");
        }
    }
    if let Ok(wire) = sdk::DataAnswer::decode(data) {
        if let Ok((id, reply)) = decode_answer(wire) {
            let again = decode_answer(encode_answer(id, &reply)).expect("re-encoded decodes");
            assert_eq!(again, (id, reply), "data answer changed across encode/decode");
        }
    }
    if let Ok(wire) = sdk::DataDelivery::decode(data) {
        if let Ok(delivery) = decode_delivery(wire) {
            let again = decode_delivery(encode_delivery(&delivery)).expect("re-encoded decodes");
            assert_eq!(again, delivery, "delivery changed across encode/decode");
        }
    }
});
