//! Conversion between the core's plain Rust types and the bytes the Raft log and snapshots hold.

use tandem_core::{ClusterState, Command, NodeId, NodeRecord};
use tandem_proto::state as wire;
use tandem_proto::Message as _;

/// Encodes a command as a log entry's data.
pub fn encode_command(command: &Command) -> Vec<u8> {
    let kind = match command {
        Command::Noop { nonce } => wire::command::Kind::Noop(wire::Noop { nonce: *nonce }),
        Command::SetNodeLiveness { node, up } => {
            wire::command::Kind::SetNodeLiveness(wire::SetNodeLiveness {
                node: node.0,
                up: *up,
            })
        }
    };
    wire::Command { kind: Some(kind) }.encode_to_vec()
}

/// Why log or snapshot bytes could not be turned into core values.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The protobuf itself is malformed.
    #[error(transparent)]
    Decode(#[from] tandem_proto::DecodeError),
    /// The protobuf is well-formed but names no known command.
    #[error("raft command has no kind (written by a newer tandem?)")]
    EmptyCommand,
}

/// Decodes a log entry's data into a command.
pub fn decode_command(data: &[u8]) -> Result<Command, CodecError> {
    let command = tandem_proto::decode_command(data)?;
    match command.kind {
        Some(wire::command::Kind::Noop(noop)) => Ok(Command::Noop { nonce: noop.nonce }),
        Some(wire::command::Kind::SetNodeLiveness(set)) => Ok(Command::SetNodeLiveness {
            node: NodeId(set.node),
            up: set.up,
        }),
        None => Err(CodecError::EmptyCommand),
    }
}

/// Encodes the cluster model for a snapshot.
pub fn encode_state(state: &ClusterState) -> Vec<u8> {
    wire::ClusterSnapshot {
        nodes: state
            .nodes
            .values()
            .map(|record| wire::NodeRecord {
                id: record.id.0,
                up: record.up,
                changed_at_index: record.changed_at_index,
            })
            .collect(),
    }
    .encode_to_vec()
}

/// Decodes the cluster model from a snapshot.
pub fn decode_state(data: &[u8]) -> Result<ClusterState, CodecError> {
    let snapshot = tandem_proto::decode_cluster_snapshot(data)?;
    let nodes = snapshot
        .nodes
        .into_iter()
        .map(|record| {
            let id = NodeId(record.id);
            (
                id,
                NodeRecord {
                    id,
                    up: record.up,
                    changed_at_index: record.changed_at_index,
                },
            )
        })
        .collect();
    Ok(ClusterState { nodes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_state_round_trip() {
        for command in [
            Command::Noop { nonce: 42 },
            Command::SetNodeLiveness {
                node: NodeId(3),
                up: false,
            },
        ] {
            assert_eq!(decode_command(&encode_command(&command)).unwrap(), command);
        }
        let mut state = ClusterState::bootstrap([NodeId(1), NodeId(2)]);
        state.apply(
            9,
            &Command::SetNodeLiveness {
                node: NodeId(2),
                up: false,
            },
        );
        assert_eq!(decode_state(&encode_state(&state)).unwrap(), state);
        assert!(matches!(decode_command(&[]), Err(CodecError::EmptyCommand)));
        assert!(decode_command(&[0xff, 0xff]).is_err());
    }
}
