//! Reading a replica file back (`tandem_node::replica_file::recover`): the bytes a crash may
//! have torn or a disk may have mangled.
//!
//! Properties: never a panic; what is read back is a consistent replica (its incremental
//! digest equals one computed from scratch); the valid prefix reads back to the same replica
//! on its own (cutting the tail is safe), and appending nothing to it changes nothing; a
//! compacted file of the result reads back to an equal replica.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_core::{ShardName, UnitName};
use tandem_node::replica_file::{compacted, header, recover};

fuzz_target!(|data: &[u8]| {
    let shard = ShardName("s0".into());
    let unit = UnitName("u1".into());
    // Half the inputs get a valid header, so the fuzzer spends its time on records.
    let bytes = if data.first().is_some_and(|byte| byte & 1 == 1) {
        let mut bytes = header(&shard, &unit);
        bytes.extend_from_slice(&data[1..]);
        bytes
    } else {
        data.to_vec()
    };
    let Ok(recovered) = recover(&bytes, &shard, &unit) else {
        return;
    };
    let replica = &recovered.replica;
    assert_eq!(
        replica.digest(),
        replica.compute_digest(),
        "a recovered replica's digest disagrees with its content"
    );
    assert!(recovered.valid_len <= bytes.len());
    let prefix = recover(&bytes[..recovered.valid_len], &shard, &unit)
        .expect("the valid prefix is a replica file");
    assert_eq!(prefix.replica.version(), replica.version());
    assert_eq!(prefix.replica.digest(), replica.digest());
    assert_eq!(prefix.complete, recovered.complete);
    let rewritten = compacted(&shard, &unit, replica, recovered.complete);
    let again = recover(&rewritten, &shard, &unit).expect("a compacted file reads back");
    assert_eq!(again.valid_len, rewritten.len(), "a compacted file is read whole");
    assert_eq!(again.replica.version(), replica.version());
    assert_eq!(again.replica.consumed(), replica.consumed());
    assert_eq!(again.replica.digest(), replica.digest());
    assert_eq!(again.complete, recovered.complete);
});
