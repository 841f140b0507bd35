//! Writes the seed corpus under `fuzz/seeds/<target>/`: small, valid inputs built with tandem's
//! own encoders (and, for `wal_replay`, with `WalStorage` itself on a `MemDisk`), so the fuzzer
//! starts from the formats instead of discovering crc32 frames and protobufs from nothing.
//!
//! Run from `fuzz/`: `cargo run --example make_seeds`. Deterministic: rerunning rewrites the
//! same bytes.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use raft::eraftpb::{ConfState, Entry, HardState, Message as RaftMessage, MessageType, Snapshot};
use tandem_core::{ClusterState, Command, NodeId};
use tandem_fuzz::{frame_input, wal_input};
use tandem_proto::admin::{self, admin_request, admin_response};
use tandem_proto::frame::encode_frame;
use tandem_proto::peer::{self, envelope};
use tandem_proto::Message as _;
use tandem_proto::state_wire::{encode_command, encode_state};
use tandem_raft::disk::{Disk, MemDisk};
use tandem_raft::{encode_raft_message, WalOptions, WalStorage};

/// Seeds larger than this are not worth committing.
const SEED_LEN_MAX: usize = 4096;

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds")
}

fn write_seed(target: &str, name: &str, data: &[u8]) {
    assert!(
        data.len() <= SEED_LEN_MAX,
        "seed {target}/{name} is {} bytes",
        data.len()
    );
    let dir = seeds_dir().join(target);
    fs::create_dir_all(&dir).expect("create seed directory");
    fs::write(dir.join(name), data).expect("write seed");
    println!("{target}/{name}: {} bytes", data.len());
}

fn entry(index: u64, term: u64, command: &Command) -> Entry {
    let mut entry = Entry::default();
    entry.index = index;
    entry.term = term;
    entry.data = encode_command(command).into();
    entry
}

fn noop(nonce: u64) -> Command {
    Command::Noop { nonce }
}

fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    let mut hard_state = HardState::default();
    hard_state.term = term;
    hard_state.vote = vote;
    hard_state.commit = commit;
    hard_state
}

fn voters() -> ConfState {
    ConfState::from((vec![1, 2, 3], vec![]))
}

/// All segment files of `disk`, in sequence order.
fn segments(disk: &MemDisk) -> Vec<Vec<u8>> {
    let mut names: Vec<String> = disk
        .list()
        .expect("list")
        .into_iter()
        .filter(|name| name.starts_with("wal-") && name.ends_with(".log"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|name| disk.read(name).expect("read segment"))
        .collect()
}

fn wal_seeds() {
    let options = WalOptions {
        segment_len_max: 4096,
        record_len_max: 1 << 20,
    };

    // A plain log: bootstrap configuration, a vote, five entries, a commit.
    let disk = MemDisk::new();
    let mut storage = WalStorage::open(disk.clone(), options, voters()).expect("open");
    storage.set_hard_state(hard_state(1, 1, 0));
    let log: Vec<Entry> = (1..=5)
        .map(|index| match index % 2 {
            0 => entry(index, 1, &noop(index * 7)),
            _ => entry(
                index,
                1,
                &Command::SetNodeLiveness {
                    node: NodeId(index % 3 + 1),
                    up: index % 4 == 1,
                    at_ms: 0,
                    promotions: Vec::new(),
                },
            ),
        })
        .collect();
    storage.append(&log);
    storage.set_commit(4);
    storage.sync().expect("sync");
    drop(storage);
    let plain = segments(&disk).remove(0);
    write_seed(
        "wal_replay",
        "one-segment",
        &wal_input::build(&[&plain], None),
    );

    // The same log with its last record torn (cut in the middle).
    let torn = &plain[..plain.len() - 5];
    write_seed("wal_replay", "torn-tail", &wal_input::build(&[torn], None));

    // A new leader overwrites a conflicting suffix: entries 3.. again, at term 2.
    let disk = MemDisk::new();
    let mut storage = WalStorage::open(disk.clone(), options, voters()).expect("open");
    storage.set_hard_state(hard_state(1, 1, 2));
    storage.append(&log);
    storage.sync().expect("sync");
    storage.set_hard_state(hard_state(2, 2, 2));
    storage.append(&[entry(3, 2, &noop(300)), entry(4, 2, &noop(400))]);
    storage.set_commit(4);
    storage.sync().expect("sync");
    drop(storage);
    let conflict = segments(&disk).remove(0);
    write_seed(
        "wal_replay",
        "conflicting-suffix",
        &wal_input::build(&[&conflict], None),
    );

    // Small segments: the log rolls over, each new segment starting with conf and hard state.
    let small = WalOptions {
        segment_len_max: 160,
        ..options
    };
    let disk = MemDisk::new();
    let mut storage = WalStorage::open(disk.clone(), small, voters()).expect("open");
    storage.set_hard_state(hard_state(3, 1, 0));
    for index in 1..=8 {
        storage.append(&[entry(index, 3, &noop(index))]);
        storage.set_commit(index - 1);
        storage.sync().expect("sync");
    }
    drop(storage);
    let rolled = segments(&disk);
    assert!(rolled.len() >= 2, "the log did not roll over");
    write_seed(
        "wal_replay",
        "two-segments",
        &wal_input::build(&[&rolled[0], &rolled[1]], None),
    );

    // A log whose first entries a snapshot covers: entries at or below the snapshot are skipped.
    write_seed(
        "wal_replay",
        "snapshot-covers-prefix",
        &wal_input::build(&[&plain], Some((3, 1))),
    );

    // A snapshot installed from the leader: the log-reset record, then entries after it.
    let disk = MemDisk::new();
    let mut storage = WalStorage::open(disk.clone(), options, voters()).expect("open");
    storage.set_hard_state(hard_state(1, 1, 1));
    storage.append(&log[..2]);
    storage.sync().expect("sync");
    let mut snapshot = Snapshot::default();
    snapshot
        .set_data(encode_state(&ClusterState::bootstrap([NodeId(1), NodeId(2), NodeId(3)])).into());
    snapshot.mut_metadata().index = 10;
    snapshot.mut_metadata().term = 2;
    snapshot.mut_metadata().set_conf_state(voters());
    storage.apply_snapshot(snapshot).expect("apply snapshot");
    storage.append(&[entry(11, 2, &noop(11)), entry(12, 2, &noop(12))]);
    storage.set_commit(11);
    storage.sync().expect("sync");
    drop(storage);
    let reset = segments(&disk).remove(0);
    write_seed(
        "wal_replay",
        "log-reset-after-snapshot",
        &wal_input::build(&[&reset], Some((10, 2))),
    );
}

fn frames(payloads: &[&[u8]]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for payload in payloads {
        encode_frame(payload, &mut out);
    }
    out.to_vec()
}

fn envelope_with_raft() -> peer::Envelope {
    let mut message = RaftMessage::default();
    message.set_msg_type(MessageType::MsgAppend);
    message.from = 1;
    message.to = 2;
    message.term = 3;
    message.log_term = 3;
    message.index = 7;
    message.commit = 7;
    message.set_entries(vec![entry(8, 3, &noop(8)), entry(9, 3, &noop(9))].into());
    peer::Envelope {
        cluster: "dev".to_owned(),
        from: 1,
        to: 2,
        body: Some(envelope::Body::Raft(encode_raft_message(&message).into())),
    }
}

fn envelope_seeds() {
    write_seed(
        "peer_envelope",
        "raft-append",
        &envelope_with_raft().encode_to_vec(),
    );

    let mut vote = RaftMessage::default();
    vote.set_msg_type(MessageType::MsgRequestVote);
    vote.from = 3;
    vote.to = 1;
    vote.term = 4;
    vote.log_term = 3;
    vote.index = 9;
    let envelope = peer::Envelope {
        cluster: "dev".to_owned(),
        from: 3,
        to: 1,
        body: Some(envelope::Body::Raft(encode_raft_message(&vote).into())),
    };
    write_seed("peer_envelope", "raft-vote", &envelope.encode_to_vec());

    let envelope = peer::Envelope {
        cluster: "dev".to_owned(),
        from: 2,
        to: 1,
        body: Some(envelope::Body::Heartbeat(peer::Heartbeat {
            term: 3,
            commit_index: 9,
            applied_index: 8,
            sent_at_us: 1_234_567,
            report: Some(tandem_node::wire::encode_report(&sample_report())),
        })),
    };
    write_seed("peer_envelope", "heartbeat", &envelope.encode_to_vec());
}

fn admin_seeds() {
    let status = admin::AdminRequest {
        forwarded: false,
        timeout_ms: 0,
        kind: Some(admin_request::Kind::Status(admin::StatusRequest::default())),
    };
    write_seed("admin_request", "status-request", &status.encode_to_vec());
    let summary = admin::AdminRequest {
        forwarded: false,
        timeout_ms: 0,
        kind: Some(admin_request::Kind::Status(admin::StatusRequest {
            shard_glob: "counter-*".to_owned(),
            service: "counter".to_owned(),
            summarise_above: Some(50),
            shards_max: 100,
            data_only: false,
        })),
    };
    write_seed(
        "admin_request",
        "status-request-summary",
        &summary.encode_to_vec(),
    );
    let noop_forwarded = admin::AdminRequest {
        forwarded: true,
        timeout_ms: 0,
        kind: Some(admin_request::Kind::Noop(admin::NoopRequest {})),
    };
    write_seed(
        "admin_request",
        "noop-request-forwarded",
        &noop_forwarded.encode_to_vec(),
    );

    let node = |id: u64, leader: bool| admin::NodeStatus {
        name: format!("n{id}"),
        id,
        up: true,
        leader,
        peer_addr: format!("127.0.0.1:{}", 7000 + id),
        admin_addr: format!("127.0.0.1:{}", 8000 + id),
        membership: "voter".to_owned(),
        admin: "unlocked".to_owned(),
        term: 3,
        commit_index: 9,
        applied_index: 9,
        match_index: 9,
        heartbeat_age_ms: (!leader).then_some(120),
    };
    let response = admin::AdminResponse {
        kind: Some(admin_response::Kind::Status(admin::Status {
            cluster: "dev".to_owned(),
            answered_by: "n1".to_owned(),
            leader: "n1".to_owned(),
            term: 3,
            commit_index: 9,
            applied_index: 9,
            nodes: vec![node(1, true), node(2, false), node(3, false)],
            from_leader: true,
            replicas: Vec::new(),
            sessions: Vec::new(),
            services: Vec::new(),
            units: Vec::new(),
            shards: Vec::new(),
            summary: None,
        })),
    };
    write_seed(
        "admin_request",
        "status-response",
        &response.encode_to_vec(),
    );
    let response = admin::AdminResponse {
        kind: Some(admin_response::Kind::Noop(admin::NoopReply {
            index: 10,
            term: 3,
            leader: "n1".to_owned(),
        })),
    };
    write_seed("admin_request", "noop-response", &response.encode_to_vec());
    let response = admin::AdminResponse {
        kind: Some(admin_response::Kind::Error(admin::AdminError {
            code: "no_leader".to_owned(),
            kind: admin::AdminCode::AdminNoLeader as i32,
            message: "no leader is known; retry in a moment".to_owned(),
        })),
    };
    write_seed("admin_request", "error-response", &response.encode_to_vec());
}

fn command_seeds() {
    write_seed("raft_command", "noop", &encode_command(&noop(42)));
    write_seed(
        "raft_command",
        "set-node-liveness",
        &encode_command(&Command::SetNodeLiveness {
            node: NodeId(2),
            up: false,
            at_ms: 1_000,
            promotions: vec![("counter-0".into(), "counter-b".into())],
        }),
    );
    let mut state = ClusterState::bootstrap([NodeId(1), NodeId(2), NodeId(3)]);
    state.apply(
        7,
        &Command::SetNodeLiveness {
            node: NodeId(3),
            up: false,
            at_ms: 0,
            promotions: Vec::new(),
        },
    );
    write_seed("raft_command", "cluster-state", &encode_state(&state));
}

/// An agent report with one unit in each interesting state.
fn sample_report() -> tandem_core::AgentReport {
    use tandem_core::{FaultId, FaultKind, Presence, SettledRoles, UnitReport};
    let mut report = tandem_core::AgentReport {
        applied_index: 9,
        units: Default::default(),
        in_sync: [(
            "counter-0".into(),
            tandem_core::InSyncClaim {
                epoch: 3,
                version: 5,
                units: ["counter-b".into()].into(),
                seq: 2,
            },
        )]
        .into(),
    };
    report.units.insert(
        "counter-a".into(),
        UnitReport {
            generation: 2,
            presence: Presence::Running,
            pid: Some(4242),
            settled: Some(SettledRoles {
                unsettled: ["counter-1".into()].into(),
                unsettled_after: None,
                acting_withheld: false,
            }),
            faults: vec![],
            load: Some(30),
        },
    );
    report.units.insert(
        "counter-b".into(),
        UnitReport {
            generation: 1,
            presence: Presence::Stopped,
            pid: None,
            settled: Default::default(),
            faults: vec![(
                FaultId {
                    generation: 1,
                    seq: 1,
                },
                FaultKind::ProcessExit {
                    code: None,
                    signal: Some(9),
                },
            )],
            load: None,
        },
    );
    report
}

fn frame_seeds() {
    let envelope = envelope_with_raft().encode_to_vec();
    let many = frames(&[b"hello", b"", &[7u8; 300], &envelope]);
    // Byte-at-a-time delivery, then larger random chunks.
    write_seed(
        "frame_decoder",
        "frames-bytewise",
        &frame_input::build(4096, 0, 0, &many),
    );
    write_seed(
        "frame_decoder",
        "frames-chunked",
        &frame_input::build(4096, 0x5a, 63, &many),
    );
    write_seed(
        "frame_decoder",
        "default-limit",
        &frame_input::build(frame_input::LIMIT_DEFAULT, 3, 255, &frames(&[&envelope])),
    );
    // A frame whose payload is over the limit of 256.
    write_seed(
        "frame_decoder",
        "too-large",
        &frame_input::build(256, 1, 16, &frames(&[b"ok", &[1u8; 300]])),
    );
    // A payload byte flipped in the second frame.
    let mut bad = frames(&[b"first", b"second"]);
    let last = bad.len() - 1;
    bad[last] ^= 0x20;
    write_seed(
        "frame_decoder",
        "bad-crc",
        &frame_input::build(64, 9, 4, &bad),
    );
    // A whole frame followed by half of another.
    let mut torn = frames(&[b"whole", b"cut short here"]);
    torn.truncate(torn.len() - 4);
    write_seed(
        "frame_decoder",
        "torn",
        &frame_input::build(64, 2, 7, &torn),
    );
}

/// Seeds for the SDK protocol: a registration, a reply with an error, a fault report, a
/// request, a batch of requests and a lease.
fn sdk_seeds() {
    use tandem_proto::sdk::{self, agent_to_unit, unit_to_agent};
    let register = sdk::UnitToAgent {
        kind: Some(unit_to_agent::Kind::Register(sdk::Register {
            unit: "counter-a".into(),
            generation: 3,
            token: "00112233445566778899aabbccddeeff".into(),
            protocol: 2,
        })),
    };
    write_seed("sdk_message", "register", &register.encode_to_vec());
    let reply = sdk::UnitToAgent {
        kind: Some(unit_to_agent::Kind::Reply(sdk::Reply {
            request: 17,
            error: Some("out of memory".into()),
        })),
    };
    write_seed("sdk_message", "reply-error", &reply.encode_to_vec());
    let fault = sdk::UnitToAgent {
        kind: Some(unit_to_agent::Kind::Fault(sdk::ReportFault {
            severity: 2,
            message: "database gone".into(),
        })),
    };
    write_seed("sdk_message", "fault", &fault.encode_to_vec());
    let request = sdk::AgentToUnit {
        kind: Some(agent_to_unit::Kind::Request(sdk::Request {
            id: 18,
            kind: Some(sdk::request::Kind::Assign(sdk::Assign {
                shard: "counter-0".into(),
                role: 1,
                epoch: 4,
            })),
        })),
    };
    write_seed("sdk_message", "assign-active", &request.encode_to_vec());
    let batch = sdk::AgentToUnit {
        kind: Some(agent_to_unit::Kind::Request(sdk::Request {
            id: 19,
            kind: Some(sdk::request::Kind::Batch(sdk::AssignBatch {
                assigns: (0..3)
                    .map(|index| sdk::Assign {
                        shard: format!("counter-{index}"),
                        role: 1,
                        epoch: 4,
                    })
                    .collect(),
            })),
        })),
    };
    write_seed("sdk_message", "assign-batch", &batch.encode_to_vec());
    let lease = sdk::AgentToUnit {
        kind: Some(agent_to_unit::Kind::Lease(sdk::Lease {
            valid_until_monotonic_ns: Some(123_456_789_000),
        })),
    };
    write_seed("sdk_message", "lease", &lease.encode_to_vec());
}

/// Seeds for the config parser: a minimal cluster and one with a service.
fn config_seeds() {
    let nodes = "[cluster]\nname = \"demo\"\ndata_dir = \"data\"\n\n[[nodes]]\nname = \"n1\"\n\
                 peer_addr = \"127.0.0.1:7101\"\nadmin_addr = \"127.0.0.1:7201\"\n\n[[nodes]]\n\
                 name = \"n2\"\npeer_addr = \"127.0.0.1:7102\"\nadmin_addr = \"127.0.0.1:7202\"\n";
    write_seed("config_parse", "nodes", nodes.as_bytes());
    let service = format!(
        "{nodes}\n[[services]]\nname = \"counter\"\nmodel = \"2n\"\nshards = [\"counter-0\"]\n\
         units = [{{ name = \"counter-a\", node = \"n1\" }}, {{ name = \"counter-b\", node = \"n2\" }}]\n\
         instantiate = [\"bin/counter\", \"--fast\"]\nhealth_interval_ms = 100\n\
         [services.escalation]\nrestart_max = 2\n"
    );
    write_seed("config_parse", "service", service.as_bytes());
}

fn main() {
    frame_seeds();
    envelope_seeds();
    admin_seeds();
    command_seeds();
    wal_seeds();
    sdk_seeds();
    config_seeds();
    data_seeds();
    resp_seeds();
}

/// Redis replies as the benchmark's peer reads them.
fn resp_seeds() {
    for (name, reply) in [
        ("status", &b"+OK\r\n"[..]),
        ("error", b"-ERR unknown command\r\n"),
        ("integer", b":1\r\n"),
        ("bulk", b"$11\r\nrole:master\r\n"),
        ("null_bulk", b"$-1\r\n"),
    ] {
        write_seed("resp_reply", name, reply);
    }
}

/// Data messages, data calls and answers, and replica files.
fn data_seeds() {
    use tandem_core::data::{
        DataMessage, DataReply, DataRequest, Item, MessageOrigin, Op, OpKind, Origin,
        PersistAction, StreamMessage, Write,
    };
    use tandem_core::{ShardName, UnitName};
    let shard = ShardName("s0".into());
    let unit = UnitName("u1".into());
    let write = Write {
        key: b"k".to_vec(),
        value: Some(b"v".to_vec().into()),
        priority: Some(3),
    };
    let op = Op {
        seq: 1,
        epoch: 2,
        kind: OpKind::Commit {
            writes: vec![write.clone()].into(),
            consumed: None,
        },
    };
    let message = Op {
        seq: 2,
        epoch: 2,
        kind: OpKind::Message(StreamMessage {
            payload: b"INVITE".to_vec(),
            origin: MessageOrigin {
                origin: Origin::Udp,
                peer: "127.0.0.1:5060".into(),
            },
        }),
    };
    let items = DataMessage::Items {
        shard: shard.clone(),
        epoch: 2,
        standby: unit.clone(),
        session: 7,
        first: 1,
        items: vec![Item::Op(op.clone()), Item::Op(message.clone())],
    };
    let encoded = tandem_proto::data_wire::encode_message(&items).encode_to_vec();
    write_seed("data_message", "items", &encoded);
    let call = tandem_proto::sdk_wire::encode_call(
        3,
        DataRequest::Commit {
            shard: shard.clone(),
            epoch: 2,
            writes: vec![write],
            consumed: Some(2),
            sync: true,
            chain: Some((1, 0)),
        },
    );
    write_seed("data_message", "commit-call", &call.encode_to_vec());
    let answer = tandem_proto::sdk_wire::encode_answer(3, &DataReply::Committed { version: 9 });
    write_seed("data_message", "committed", &answer.encode_to_vec());

    let mut file = tandem_node::replica_file::header(&shard, &unit);
    for action in [
        PersistAction::Op(op),
        PersistAction::Op(message),
        PersistAction::Complete,
    ] {
        file.extend(tandem_node::replica_file::record(&action).expect("a record"));
    }
    // The target prepends the header itself when the first byte is odd.
    write_seed("replica_file", "whole-file", &[&[0u8][..], &file].concat());
    let records = &file[tandem_node::replica_file::header(&shard, &unit).len()..];
    write_seed("replica_file", "records", &[&[1u8][..], records].concat());
}
