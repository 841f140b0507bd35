//! Generates the prost types from `proto/*.proto` with protox, so no system `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "peer.proto",
        "state.proto",
        "admin.proto",
        "sdk.proto",
        "data.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={}", proto_dir.join(file).display());
    }
    let descriptors = protox::compile(files, [&proto_dir])?;
    // Maps as BTreeMaps: encoding then follows key order, so the same value always encodes to
    // the same bytes (a HashMap's order is random per process).
    // Checkpoint values as `bytes::Bytes`: decoded from a received frame they share its
    // buffer instead of being copied, and the core's ops carry them the same way (an op is
    // kept in the op log, written to the replica file and sent to each STANDBY). Encoded ops
    // (`Item.op`, `ReplicaRecord.op`) as `Bytes` too: the daemon encodes them from its own
    // types (`data_wire::encode_op_bytes`), and a decoded one shares the frame's buffer.
    prost_build::Config::new()
        .btree_map(["."])
        .bytes([
            ".tandem.data.Write.value",
            ".tandem.data.Section.value",
            ".tandem.data.Item.op",
            ".tandem.data.ReplicaRecord.op",
        ])
        .compile_fds(descriptors)?;
    Ok(())
}
