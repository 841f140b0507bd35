//! The SDK endpoint: a Unix socket per node, owner-only, where units register and then talk to
//! their agent with framed `proto/sdk.proto` messages.
//!
//! A connection starts with `Register` (unit, generation, the instance's token). The event loop
//! checks the token and asks the agent whether it expects that instance; a refused
//! registration gets `Refused` and the connection closes. After `Welcome`, requests and lease
//! updates flow to the unit through a bounded queue, and replies, faults and load reports flow
//! back to the event loop. A closed connection is reported, and the agent kills the unit: a
//! unit that cannot hear its agent cannot be told to stop acting.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use bytes::BytesMut;
use tandem_core::UnitName;
use tandem_io::QuietStream;
use tandem_node::UnitEvent;
use tandem_proto::frame::FrameDecoder;
use tandem_proto::sdk::{self, agent_to_unit, unit_to_agent, AgentToUnit, UnitToAgent};
use tandem_proto::sdk_stream::{read_message, write_message, write_queued};
use tandem_proto::state_wire::decode_severity;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::event::{Event, EventSender, Registration};

/// Largest frame a unit may send (a reply or report is tiny).
pub const UNIT_FRAME_LEN_MAX: usize = 16 * 1024 * 1024;
/// Messages queued for one unit before new ones are dropped (a unit this far behind misses its
/// hook deadlines anyway).
pub const UNIT_QUEUE_LEN_MAX: usize = 8192;
/// The SDK protocol version this daemon speaks (2: batches of assignments).
pub const PROTOCOL_VERSION: u32 = 2;

/// Binds the node's SDK socket at `path`: its directory is made owner-only, a stale socket file
/// is removed, and the socket itself is owner-only.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves unit connections until the listener fails.
pub async fn serve(listener: UnixListener, events: EventSender) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "accepting an SDK connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let events = events.clone();
        tokio::spawn(async move {
            if let Err(reason) = connection(stream, &events).await {
                tracing::warn!(%reason, "SDK connection closed");
            }
        });
    }
}

fn refused(reason: impl Into<String>) -> AgentToUnit {
    AgentToUnit {
        kind: Some(agent_to_unit::Kind::Refused(sdk::Refused {
            reason: reason.into(),
        })),
    }
}

async fn connection(stream: UnixStream, events: &EventSender) -> Result<(), String> {
    // Readable events only: an answer written never wakes this daemon (see `tandem_io`).
    let stream = stream
        .into_std()
        .and_then(QuietStream::new)
        .map_err(|error| format!("register the connection: {error}"))?;
    let (mut read, mut write) = stream.into_split();
    let decoder = FrameDecoder::new(UNIT_FRAME_LEN_MAX);
    let mut buffer = BytesMut::with_capacity(4096);
    let first = read_message::<UnitToAgent>(&mut read, &decoder, &mut buffer, "unit message")
        .await
        .map_err(|error| error.to_string())?;
    let Some(sdk::UnitToAgent {
        kind: Some(unit_to_agent::Kind::Register(register)),
    }) = first
    else {
        let _ = write_message(
            &mut write,
            &refused("the first message must be a registration"),
        )
        .await;
        return Err("a unit did not register first".into());
    };
    if register.protocol != PROTOCOL_VERSION {
        let reason = format!(
            "SDK protocol {} is not spoken by this tandemd (it speaks {PROTOCOL_VERSION}); \
             rebuild the unit against the same tandem version",
            register.protocol
        );
        let _ = write_message(&mut write, &refused(reason.clone())).await;
        return Err(reason);
    }
    let unit = UnitName(register.unit.clone());
    let generation = register.generation;
    let (to_unit, mut outbox) = mpsc::channel(UNIT_QUEUE_LEN_MAX);
    let (reply, answer) = oneshot::channel();
    let answers = to_unit.clone();
    let registration = Registration {
        unit: unit.clone(),
        generation,
        token: register.token,
        channel: to_unit,
        reply,
    };
    if events.send(Event::Register(registration)).await.is_err() {
        return Ok(());
    }
    let welcome = match answer.await {
        Ok(Ok(welcome)) => welcome,
        Ok(Err(reason)) => {
            let _ = write_message(&mut write, &refused(reason.clone())).await;
            return Err(format!("registration of unit {unit} refused: {reason}"));
        }
        Err(_) => return Ok(()),
    };
    let welcome = AgentToUnit {
        kind: Some(agent_to_unit::Kind::Welcome(welcome)),
    };
    write_message(&mut write, &welcome)
        .await
        .map_err(|e| e.to_string())?;

    let writer = tokio::spawn(async move {
        let _ = write_queued(&mut outbox, &mut write).await;
    });
    let result = loop {
        let message =
            match read_message::<UnitToAgent>(&mut read, &decoder, &mut buffer, "unit message")
                .await
                .map_err(|error| error.to_string())
            {
                Ok(Some(message)) => message,
                Ok(None) => break Ok(()),
                Err(reason) => break Err(format!("unit {unit}: {reason}")),
            };
        let event = match message.kind {
            Some(unit_to_agent::Kind::Reply(reply)) => UnitEvent::Reply {
                unit: unit.clone(),
                generation,
                request: reply.request,
                result: match reply.error {
                    None => Ok(()),
                    Some(error) => Err(error),
                },
            },
            Some(unit_to_agent::Kind::Fault(fault)) => match decode_severity(fault.severity) {
                Ok(severity) => {
                    tracing::warn!(%unit, severity = severity.name(), message = %fault.message, "unit reported a fault");
                    UnitEvent::Fault {
                        unit: unit.clone(),
                        generation,
                        severity,
                    }
                }
                Err(error) => break Err(format!("unit {unit}: bad fault report: {error}")),
            },
            Some(unit_to_agent::Kind::Load(load)) => UnitEvent::Load {
                unit: unit.clone(),
                generation,
                load: load.load,
            },
            Some(unit_to_agent::Kind::Fenced(fenced)) => UnitEvent::Fenced {
                unit: unit.clone(),
                generation,
                shards: fenced
                    .shards
                    .into_iter()
                    .map(tandem_core::ShardName)
                    .collect(),
            },
            Some(unit_to_agent::Kind::Data(call)) => {
                let id = call.id;
                match tandem_proto::sdk_wire::decode_call(call) {
                    Ok((id, request)) => {
                        let event = Event::UnitData {
                            unit: unit.clone(),
                            generation,
                            id,
                            request,
                        };
                        if events.send(event).await.is_err() {
                            break Ok(());
                        }
                    }
                    Err(error) => {
                        // The application's input (a key too long, a value too big): it gets
                        // the reason, the connection stays.
                        let reply = tandem_core::data::DataReply::Error {
                            code: tandem_core::data::RefusalCode::BadRequest,
                            message: error.to_string(),
                        };
                        let answer = AgentToUnit {
                            kind: Some(agent_to_unit::Kind::Answer(
                                tandem_proto::sdk_wire::encode_answer(id, &reply),
                            )),
                        };
                        if answers.send(answer).await.is_err() {
                            break Ok(());
                        }
                    }
                }
                continue;
            }
            Some(unit_to_agent::Kind::ReplyTo(reply)) => {
                let Ok(peer) = reply.peer.parse() else {
                    tracing::warn!(%unit, peer = %reply.peer, "ingress reply to a malformed address dropped");
                    continue;
                };
                let event = Event::IngressReply {
                    shard: tandem_core::ShardName(reply.shard),
                    peer,
                    payload: reply.payload,
                    tcp: reply.tcp,
                };
                if events.send(event).await.is_err() {
                    break Ok(());
                }
                continue;
            }
            Some(unit_to_agent::Kind::Register(_)) | None => {
                break Err(format!(
                    "unit {unit}: unexpected message after registration"
                ))
            }
        };
        if events.send(Event::Unit(event)).await.is_err() {
            break Ok(());
        }
    };
    writer.abort();
    let _ = events
        .send(Event::Unit(UnitEvent::Disconnected { unit, generation }))
        .await;
    result
}
