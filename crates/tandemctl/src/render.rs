//! Turning answers into text: human tables and JSON for machines.

use std::io::Write;

use serde::Serialize;
use tandem_proto::admin::{NodeStatus, Status};

/// Lays out rows as left-aligned columns separated by two spaces, without trailing spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.chars().count()).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            if index < widths.len() {
                widths[index] = widths[index].max(cell.chars().count());
            } else {
                widths.push(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|cell| cell.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (index, cell) in row.iter().enumerate() {
            if index > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[index].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The human view of `status`: a summary line, a warning when the figures are not the
/// leader's, and one row per node.
pub fn status_table(status: &Status) -> String {
    let leader = if status.leader.is_empty() {
        "none"
    } else {
        status.leader.as_str()
    };
    let mut out = format!(
        "cluster {}  leader {}  term {}  commit {}  applied {}  (answered by {})\n",
        status.cluster,
        leader,
        status.term,
        status.commit_index,
        status.applied_index,
        status.answered_by
    );
    if !status.from_leader {
        out.push_str(&format!(
            "no leader reachable: figures below are {}'s own view\n",
            status.answered_by
        ));
    }
    let header = [
        "NODE",
        "ID",
        "UP",
        "ROLE",
        "MEMBERSHIP",
        "TERM",
        "COMMIT",
        "APPLIED",
        "MATCH",
        "LAST HEARTBEAT",
        "PEER",
        "ADMIN",
    ];
    let rows: Vec<Vec<String>> = status
        .nodes
        .iter()
        .map(|node| {
            vec![
                node.name.clone(),
                node.id.to_string(),
                if node.up { "up" } else { "down" }.to_string(),
                if node.leader { "leader" } else { "follower" }.to_string(),
                node.membership.clone(),
                node.term.to_string(),
                node.commit_index.to_string(),
                node.applied_index.to_string(),
                node.match_index.to_string(),
                match node.heartbeat_age_ms {
                    Some(age) => format!("{age} ms ago"),
                    None => "-".to_string(),
                },
                node.peer_addr.clone(),
                node.admin_addr.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&header, &rows));
    out
}

/// JSON shape of `status --json`. Field order is the output order.
#[derive(Debug, Serialize)]
struct StatusJson<'a> {
    cluster: &'a str,
    answered_by: &'a str,
    leader: Option<&'a str>,
    term: u64,
    commit_index: u64,
    applied_index: u64,
    from_leader: bool,
    nodes: Vec<NodeJson<'a>>,
}

/// JSON shape of one node in `status --json`.
#[derive(Debug, Serialize)]
struct NodeJson<'a> {
    name: &'a str,
    id: u64,
    up: bool,
    leader: bool,
    membership: &'a str,
    peer_addr: &'a str,
    admin_addr: &'a str,
    term: u64,
    commit_index: u64,
    applied_index: u64,
    match_index: u64,
    heartbeat_age_ms: Option<u64>,
}

impl<'a> From<&'a NodeStatus> for NodeJson<'a> {
    fn from(node: &'a NodeStatus) -> Self {
        Self {
            name: &node.name,
            id: node.id,
            up: node.up,
            leader: node.leader,
            membership: &node.membership,
            peer_addr: &node.peer_addr,
            admin_addr: &node.admin_addr,
            term: node.term,
            commit_index: node.commit_index,
            applied_index: node.applied_index,
            match_index: node.match_index,
            heartbeat_age_ms: node.heartbeat_age_ms,
        }
    }
}

/// The machine view of `status`: one pretty-printed JSON object, ending with a newline.
pub fn status_json(status: &Status) -> String {
    let view = StatusJson {
        cluster: &status.cluster,
        answered_by: &status.answered_by,
        leader: Some(status.leader.as_str()).filter(|leader| !leader.is_empty()),
        term: status.term,
        commit_index: status.commit_index,
        applied_index: status.applied_index,
        from_leader: status.from_leader,
        nodes: status.nodes.iter().map(NodeJson::from).collect(),
    };
    // Strings, integers, booleans and options always serialize; failing would be a bug here.
    let mut out = serde_json::to_string_pretty(&view).expect("status view serializes to JSON");
    out.push('\n');
    out
}

/// Writes one progress or report line to stdout. A failed write is ignored: losing a
/// progress line (say, to `| head`) must not abort a command half-way, as `println!` would
/// by panicking, leaving daemons started and unrecorded.
pub fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

/// Writes `text` to stdout. A closed pipe (`tandemctl status | head -1`) is not an error:
/// the reader has what it wanted.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, id: u64, up: bool, leader: bool, age: Option<u64>) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            id,
            up,
            leader,
            peer_addr: format!("127.0.0.1:{}", 7100 + id),
            admin_addr: format!("127.0.0.1:{}", 7200 + id),
            membership: if id <= 2 { "voter" } else { "learner" }.into(),
            term: 3,
            commit_index: if up { 42 } else { 17 },
            applied_index: if up { 42 } else { 17 },
            match_index: if up { 42 } else { 17 },
            heartbeat_age_ms: age,
        }
    }

    fn sample(from_leader: bool) -> Status {
        Status {
            cluster: "demo".into(),
            answered_by: "n2".into(),
            leader: if from_leader {
                "n1".into()
            } else {
                String::new()
            },
            term: 3,
            commit_index: 42,
            applied_index: 42,
            nodes: vec![
                node("n1", 1, true, true, None),
                node("n2", 2, true, false, Some(12)),
                node("n3", 3, false, false, Some(1520)),
            ],
            from_leader,
        }
    }

    #[test]
    fn table_from_leader() {
        let expected = "\
cluster demo  leader n1  term 3  commit 42  applied 42  (answered by n2)
NODE  ID  UP    ROLE      MEMBERSHIP  TERM  COMMIT  APPLIED  MATCH  LAST HEARTBEAT  PEER            ADMIN
n1    1   up    leader    voter       3     42      42       42     -               127.0.0.1:7101  127.0.0.1:7201
n2    2   up    follower  voter       3     42      42       42     12 ms ago       127.0.0.1:7102  127.0.0.1:7202
n3    3   down  follower  learner     3     17      17       17     1520 ms ago     127.0.0.1:7103  127.0.0.1:7203
";
        assert_eq!(status_table(&sample(true)), expected);
    }

    #[test]
    fn table_without_leader_warns() {
        let text = status_table(&sample(false));
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("cluster demo  leader none  term 3  commit 42  applied 42  (answered by n2)")
        );
        assert_eq!(
            lines.next(),
            Some("no leader reachable: figures below are n2's own view")
        );
        assert!(lines.next().is_some_and(|line| line.starts_with("NODE")));
    }

    #[test]
    fn table_with_no_nodes_has_a_header_only() {
        let mut status = sample(true);
        status.nodes.clear();
        assert_eq!(status_table(&status).lines().count(), 2);
    }

    #[test]
    fn json_has_the_documented_shape() {
        let value: serde_json::Value = serde_json::from_str(&status_json(&sample(true))).unwrap();
        let expected = serde_json::json!({
            "cluster": "demo",
            "answered_by": "n2",
            "leader": "n1",
            "term": 3,
            "commit_index": 42,
            "applied_index": 42,
            "from_leader": true,
            "nodes": [
                {"name": "n1", "id": 1, "up": true, "leader": true, "membership": "voter",
                 "peer_addr": "127.0.0.1:7101", "admin_addr": "127.0.0.1:7201", "term": 3,
                 "commit_index": 42, "applied_index": 42, "match_index": 42,
                 "heartbeat_age_ms": null},
                {"name": "n2", "id": 2, "up": true, "leader": false, "membership": "voter",
                 "peer_addr": "127.0.0.1:7102", "admin_addr": "127.0.0.1:7202", "term": 3,
                 "commit_index": 42, "applied_index": 42, "match_index": 42,
                 "heartbeat_age_ms": 12},
                {"name": "n3", "id": 3, "up": false, "leader": false, "membership": "learner",
                 "peer_addr": "127.0.0.1:7103", "admin_addr": "127.0.0.1:7203", "term": 3,
                 "commit_index": 17, "applied_index": 17, "match_index": 17,
                 "heartbeat_age_ms": 1520},
            ]
        });
        assert_eq!(value, expected);
    }

    #[test]
    fn json_leader_is_null_without_one() {
        let value: serde_json::Value = serde_json::from_str(&status_json(&sample(false))).unwrap();
        assert!(value["leader"].is_null());
        assert_eq!(value["from_leader"], serde_json::json!(false));
    }

    #[test]
    fn table_pads_ragged_rows() {
        let text = table(&["A", "LONGER"], &[vec!["xxxx".into(), "y".into()]]);
        assert_eq!(text, "A     LONGER\nxxxx  y\n");
    }
}
