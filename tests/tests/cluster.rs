//! End-to-end: real `tandemd` processes on loopback elect a leader, survive `kill -9`,
//! report the truth in status, recover from their own log, and cut a torn WAL tail.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use tandem_e2e::{wait_for, TestCluster, DEADLINE};

#[test]
fn three_nodes_elect_one_leader_that_commits() {
    let cluster = TestCluster::start(3);
    let status = cluster.wait_leader(&[0, 1, 2]);
    assert_eq!(status.cluster, "e2e");
    assert_eq!(status.nodes.len(), 3);
    assert!(status.term >= 1);
    // Every node, asked directly, names the same leader (followers forward to it).
    for index in 0..3 {
        let seen = wait_for("every node to agree on the leader", DEADLINE, || {
            cluster
                .status(index)
                .filter(|answer| answer.leader == status.leader || answer.term > status.term)
        });
        assert!(!seen.leader.is_empty());
    }
    let committed = wait_for("a no-op to commit", DEADLINE, || cluster.noop(1));
    assert!(committed.index > 0);
    let after = cluster.wait_leader(&[0, 1, 2]);
    assert!(after.commit_index >= committed.index);
    assert!(
        after.nodes.iter().all(|node| node.up),
        "all nodes up: {after:?}"
    );
    assert_eq!(
        after.nodes.iter().filter(|node| node.leader).count(),
        1,
        "exactly one leader in {after:?}"
    );
}

#[test]
fn killed_leader_is_replaced_reported_down_and_catches_up_after_restart() {
    let mut cluster = TestCluster::start(3);
    let first = cluster.wait_leader(&[0, 1, 2]);
    wait_for("a first commit", DEADLINE, || cluster.noop(0));
    let old = cluster.index_of(&first.leader).unwrap();
    let others: Vec<usize> = (0..3).filter(|&index| index != old).collect();

    cluster.kill9(old);
    let second = cluster.wait_leader(&others);
    assert_ne!(second.leader, first.leader);
    assert!(second.term > first.term);
    let committed = wait_for("a commit by the new leader", DEADLINE, || {
        cluster.noop(others[0])
    });
    assert_eq!(committed.leader, second.leader);
    let down = wait_for("status to show the killed node down", DEADLINE, || {
        let status = cluster.status(others[1])?;
        let node = status.nodes.iter().find(|node| node.name == first.leader)?;
        (!node.up).then_some(status)
    });
    assert_eq!(down.leader, second.leader);

    for _ in 0..20 {
        wait_for(
            "more commits while the old leader is away",
            DEADLINE,
            || cluster.noop(others[1]),
        );
    }
    let target = cluster.wait_leader(&others).commit_index;
    cluster.spawn(old);
    wait_for(
        "the restarted node to be up and caught up",
        DEADLINE,
        || {
            let status = cluster.status(others[0])?;
            let node = status.nodes.iter().find(|node| node.name == first.leader)?;
            (node.up && node.applied_index >= target).then_some(())
        },
    );
    // It replayed its own log on restart rather than starting empty.
    let log = cluster.log(old);
    let restart = log.rfind("tandemd starting").expect("restart logged");
    assert!(
        !log[restart..].contains("bootstrapped=true"),
        "restart must reuse the node's log:\n{log}"
    );
}

#[test]
fn node_with_a_torn_wal_tail_restarts_cleanly() {
    let mut cluster = TestCluster::start(3);
    let leader = cluster.wait_leader(&[0, 1, 2]).leader;
    for _ in 0..10 {
        wait_for("commits", DEADLINE, || cluster.noop(0));
    }
    // A follower: the point is recovery of its own log, not a change of leader.
    let victim = (0..3)
        .find(|&index| cluster.nodes[index].name != leader)
        .unwrap();
    let reference = (0..3).find(|&index| index != victim).unwrap();
    cluster.kill9(victim);
    // Cut the last segment in the middle of its last record, as a power loss could.
    let mut segments: Vec<_> = std::fs::read_dir(cluster.raft_dir(victim))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    segments.sort();
    let last = segments.last().expect("a WAL segment");
    let len = std::fs::metadata(last).unwrap().len();
    assert!(len > 16, "segment holds records");
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len - 3)
        .unwrap();

    let before_restart = cluster.log(victim).len();
    cluster.spawn(victim);
    // The restarted process itself must answer: another node's status may still show the
    // victim up, at the index it had before the kill, until its node timeout.
    wait_for("the restarted node to answer", DEADLINE, || {
        cluster.status(victim)
    });
    // The cut is reported in the restart's log.
    cluster.wait_log(victim, before_restart, "torn raft log tail");
    // A commit made after the restart reaches it: its log works again.
    wait_for("a commit after the restart", DEADLINE, || {
        cluster.noop(reference)
    });
    let target = cluster.wait_leader(&[0, 1, 2]).commit_index;
    wait_for("the node with the torn tail to catch up", DEADLINE, || {
        let status = cluster.status(victim)?;
        (status.nodes[victim].applied_index >= target).then_some(())
    });
}

#[test]
fn bad_frames_drop_the_connection_and_the_daemon_keeps_serving() {
    let mut cluster = TestCluster::start(1);
    cluster.wait_leader(&[0]);
    // A frame with a wrong crc on the peer port: the connection is closed.
    let mut peer = TcpStream::connect(cluster.nodes[0].peer).unwrap();
    peer.write_all(&[0, 0, 0, 3, 1, 2, 3, 4, 9, 9, 9]).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    let closed = peer.read_to_end(&mut rest);
    assert!(closed.is_ok() || rest.is_empty(), "peer connection closed");
    // An oversize frame header on the admin port gets an error answer, then the close.
    let mut admin = TcpStream::connect(cluster.nodes[0].admin).unwrap();
    admin
        .write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0])
        .unwrap();
    admin
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    admin.read_to_end(&mut answer).unwrap();
    let decoder = tandem_proto::frame::FrameDecoder::new(1 << 20);
    let mut buf = bytes_from(&answer);
    let payload = decoder.decode(&mut buf).unwrap().expect("an error frame");
    let response = tandem_proto::decode_admin_response(&payload).unwrap();
    match response.kind {
        Some(tandem_proto::admin::admin_response::Kind::Error(error)) => {
            assert_eq!(
                tandem_proto::admin_wire::decode_admin_code(&error),
                tandem::AdminCode::BadRequest
            );
            assert!(
                error.message.contains("exceeds the limit"),
                "{}",
                error.message
            );
        }
        other => panic!("expected an error answer, got {other:?}"),
    }
    // Still serving.
    assert!(cluster.noop(0).is_some());
    cluster.wait_log(0, 0, "peer connection dropped");
    assert!(cluster.terminate(0), "clean exit on SIGTERM");
}

fn bytes_from(data: &[u8]) -> bytes::BytesMut {
    bytes::BytesMut::from(data)
}

/// A daemon whose stderr nobody reads (a stalled journal, a pipe whose reader hung) keeps
/// serving, and exits when told: its event loop hands log lines to a writer thread and never
/// blocks on them. The
/// start of 2,000 shards logs far more than a pipe holds (64 KiB on Linux); a daemon that
/// wrote from its event loop would stop at the first full pipe and never answer again.
#[test]
fn a_daemon_whose_stderr_blocks_keeps_serving() {
    const SHARDS: usize = 2_000;
    let shards: Vec<String> = (0..SHARDS).map(|i| format!("\"x{i}\"")).collect();
    let services = format!(
        "\n[[services]]\nname = \"solo\"\nmodel = \"none\"\nshards = [{}]\n\
         units = [{{ name = \"solo-a\", node = \"n1\" }}]\n\
         instantiate = [\"{{unit_bin}}\"]\n\
         env = {{ TANDEM_TEST_RECORD = \"{{record}}\" }}\n",
        shards.join(", ")
    );
    let mut cluster = TestCluster::configure(1, "", &services);
    let (unread, stderr) = std::io::pipe().expect("create a pipe");
    cluster.spawn_logging_to(0, stderr);
    let status = wait_for("every shard to have a confirmed ACTIVE", DEADLINE, || {
        cluster.leader_status().filter(|status| {
            status.shards.len() == SHARDS
                && status.shards.iter().all(|shard| {
                    shard
                        .roles
                        .iter()
                        .any(|role| role.role == "ACTIVE" && role.confirmed)
                })
        })
    });
    assert_eq!(status.shards.len(), SHARDS);
    // The pipe is full (the writer thread's next write waits for room less than a page
    // from its end): the daemon's other lines are waiting or were dropped, not written.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&unread);
    let mut pending: libc::c_int = 0;
    // SAFETY: fcntl and ioctl on a pipe descriptor we own; FIONREAD writes one int.
    let (capacity, result) = unsafe {
        (
            libc::fcntl(fd, libc::F_GETPIPE_SZ),
            libc::ioctl(fd, libc::FIONREAD, &mut pending),
        )
    };
    assert!(capacity > 0 && result == 0);
    assert!(
        pending > capacity - 4096,
        "only {pending} of {capacity} bytes in the pipe"
    );
    let committed = wait_for("a no-op to commit", DEADLINE, || cluster.noop(0));
    assert!(committed.index > 0);
    // And it still exits on SIGTERM: the log's last lines wait for the pipe a second at most.
    assert!(
        cluster.terminate(0),
        "clean exit on SIGTERM with stderr stalled"
    );
    drop(unread);
}
