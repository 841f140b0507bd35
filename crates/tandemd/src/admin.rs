//! The admin endpoint: framed `AdminRequest` → `AdminResponse` over TCP.
//!
//! A connection may carry several requests, one after the other. Each request goes to the
//! event loop, which either answers it (status from its own state, an operation once it is
//! done) or names the leader's admin address, in which case the request is forwarded there
//! once (a forwarded request is never forwarded again, so a stale leader hint cannot loop).
//! An events request is answered here, from the daemon's event log: the backlog, then (with
//! `follow`) every new event until the client disconnects.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tandem_core::{
    AdminCode, AdminOp, AdminTarget, NodeId, Refusal, ServiceName, ShardName, SwitchoverTarget,
    UnitName,
};
use tandem_node::AdminAction;
use tandem_proto::admin::{
    admin_request, admin_response, operation_request, switchover_request, AdminRequest,
    AdminResponse, EventsEnd,
};
use tandem_proto::frame::{encode_frame, FrameDecoder};
use tandem_proto::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::config::Config;
use crate::event::{AdminOutcome, Event, EventSender};
use crate::event_log::EventLog;

pub use tandem_proto::admin_wire::error_response;

/// Serves admin connections until the listener fails.
pub async fn serve_admin(
    listener: TcpListener,
    frame_len_max: usize,
    request_timeout: Duration,
    events: EventSender,
    log: Arc<EventLog>,
) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting an admin connection failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let events = events.clone();
        let log = log.clone();
        tokio::spawn(async move {
            if let Err(reason) =
                admin_connection(stream, frame_len_max, request_timeout, &events, &log).await
            {
                tracing::warn!(%remote, %reason, "admin connection dropped");
            }
        });
    }
}

async fn admin_connection(
    mut stream: TcpStream,
    frame_len_max: usize,
    request_timeout: Duration,
    events: &EventSender,
    log: &EventLog,
) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let decoder = FrameDecoder::new(frame_len_max);
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let payload = loop {
            match decoder.decode(&mut buf) {
                Ok(Some(payload)) => break payload,
                Ok(None) => {}
                Err(error) => {
                    let response =
                        error_response(AdminCode::BadRequest, format!("bad frame: {error}"));
                    let _ = write_response(&mut stream, &response).await;
                    return Err(error.to_string());
                }
            }
            let read = stream.read_buf(&mut buf).await.map_err(|e| e.to_string())?;
            if read == 0 {
                return Ok(());
            }
        };
        let response = match tandem_proto::decode_admin_request(&payload) {
            Ok(AdminRequest {
                kind: Some(admin_request::Kind::Events(ask)),
                ..
            }) => return stream_events(&mut stream, log, ask.since_seq, ask.follow).await,
            Ok(request) => handle(request, request_timeout, events).await,
            Err(error) => {
                let response = error_response(AdminCode::BadRequest, error.to_string());
                let _ = write_response(&mut stream, &response).await;
                return Err(error.to_string());
            }
        };
        write_response(&mut stream, &response)
            .await
            .map_err(|e| e.to_string())?;
    }
}

async fn write_response(stream: &mut TcpStream, response: &AdminResponse) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    encode_frame(&response.encode_to_vec(), &mut out);
    stream.write_all(&out).await
}

/// Writes the event log from `since_seq` and, with `follow`, new events until the client goes.
async fn stream_events(
    stream: &mut TcpStream,
    log: &EventLog,
    since_seq: u64,
    follow: bool,
) -> Result<(), String> {
    let (backlog, next_seq, mut live) = log.subscribe(since_seq);
    for record in backlog {
        let response = AdminResponse {
            kind: Some(admin_response::Kind::Event(record)),
        };
        write_response(stream, &response)
            .await
            .map_err(|e| e.to_string())?;
    }
    if !follow {
        let end = AdminResponse {
            kind: Some(admin_response::Kind::EventsEnd(EventsEnd { next_seq })),
        };
        return write_response(stream, &end)
            .await
            .map_err(|e| e.to_string());
    }
    let (mut read, mut write) = stream.split();
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            // The client sends nothing more; a read returning means it went away.
            _ = read.read(&mut probe) => return Ok(()),
            record = live.recv() => {
                let record = match record {
                    Ok(record) => record,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        let response = error_response(
                            AdminCode::Lagged,
                            format!("{missed} events were missed (the client read too slowly); reconnect"),
                        );
                        let mut out = BytesMut::new();
                        encode_frame(&response.encode_to_vec(), &mut out);
                        let _ = write.write_all(&out).await;
                        return Ok(());
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
                };
                let response = AdminResponse { kind: Some(admin_response::Kind::Event(record)) };
                let mut out = BytesMut::new();
                encode_frame(&response.encode_to_vec(), &mut out);
                write.write_all(&out).await.map_err(|e| e.to_string())?;
            }
        }
    }
}

async fn handle(
    request: AdminRequest,
    request_timeout: Duration,
    events: &EventSender,
) -> AdminResponse {
    let request_timeout = admin_wait(&request, request_timeout);
    let forwarded = request.forwarded;
    // The request is kept for forwarding.
    let outcome = match ask_loop(request.clone(), request_timeout, events).await {
        Ok(outcome) => outcome,
        Err(response) => return response,
    };
    match outcome {
        AdminOutcome::Reply(response) => response,
        AdminOutcome::Forward { leader, fallback } => {
            debug_assert!(!forwarded, "a forwarded request is answered locally");
            let mut forwarded_request = request;
            forwarded_request.forwarded = true;
            match forward(leader, &forwarded_request, request_timeout).await {
                Ok(response) => response,
                Err(reason) => {
                    tracing::debug!(%leader, %reason, "forwarding an admin request failed");
                    match fallback {
                        Some(fallback) => fallback,
                        // This node's own answer, asked for only now that it is needed; marked
                        // forwarded, it is answered locally.
                        None => match ask_loop(forwarded_request, request_timeout, events).await {
                            Ok(AdminOutcome::Reply(response)) => response,
                            Ok(AdminOutcome::Forward { .. }) => error_response(
                                AdminCode::Failed,
                                "a forwarded request was forwarded again (this is a bug in tandemd)",
                            ),
                            Err(response) => response,
                        },
                    }
                }
            }
        }
    }
}

/// Hands `request` to the event loop and waits at most `request_timeout` for its outcome; the
/// error is the answer to give instead.
async fn ask_loop(
    request: AdminRequest,
    request_timeout: Duration,
    events: &EventSender,
) -> Result<AdminOutcome, AdminResponse> {
    let (reply, outcome) = oneshot::channel();
    if events.send(Event::Admin { request, reply }).await.is_err() {
        return Err(error_response(
            AdminCode::ShuttingDown,
            "the daemon is shutting down; retry another node",
        ));
    }
    match tokio::time::timeout(request_timeout, outcome).await {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(_)) => Err(error_response(
            AdminCode::Aborted,
            "the request was dropped (leadership changed or the daemon is stopping); retry",
        )),
        Err(_) => Err(error_response(
            AdminCode::Timeout,
            format!(
                "no answer within {} ms (is a quorum of nodes up? an operation that was \
                 accepted goes on; check `tandemctl status`)",
                request_timeout.as_millis()
            ),
        )),
    }
}

/// Sends a request to another daemon's admin endpoint and reads one response.
async fn forward(
    addr: SocketAddr,
    request: &AdminRequest,
    timeout: Duration,
) -> Result<AdminResponse, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let mut out = BytesMut::new();
        encode_frame(&request.encode_to_vec(), &mut out);
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        let decoder = FrameDecoder::new(tandem_proto::frame::DEFAULT_FRAME_LEN_MAX * 4);
        let mut buf = BytesMut::new();
        loop {
            if let Some(payload) = decoder.decode(&mut buf).map_err(|e| e.to_string())? {
                return tandem_proto::decode_admin_response(&payload).map_err(|e| e.to_string());
            }
            if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("leader closed the connection".to_owned());
            }
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| "leader did not answer in time".to_owned())?
}

/// Longest wait a client may ask for on an admin operation.
const ADMIN_WAIT_MAX: Duration = Duration::from_secs(300);

/// How long an admin request may take: what the client asked for (bounded), at least the
/// daemon's own admin timeout.
pub fn admin_wait(request: &AdminRequest, default: Duration) -> Duration {
    Duration::from_millis(u64::from(request.timeout_ms))
        .max(default)
        .min(ADMIN_WAIT_MAX)
}

/// The action an admin request asks for (node names resolved against the config), or why
/// it is malformed.
pub fn decode_action(config: &Config, kind: &admin_request::Kind) -> Result<AdminAction, Refusal> {
    let bad = |message: String| Refusal {
        code: AdminCode::BadRequest,
        message,
    };
    let node_id = |name: &str| {
        config
            .node(name)
            .map(|node| NodeId(node.id))
            .ok_or_else(|| Refusal {
                code: AdminCode::NotFound,
                message: format!(
                    "there is no node {name:?} (nodes: {})",
                    config
                        .nodes
                        .iter()
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    };
    match kind {
        admin_request::Kind::Noop(_) => Ok(AdminAction::Noop),
        admin_request::Kind::Switchover(switchover) => {
            Ok(AdminAction::Switchover(match &switchover.target {
                Some(switchover_request::Target::Shard(shard)) => {
                    SwitchoverTarget::Shard(ShardName(shard.clone()))
                }
                Some(switchover_request::Target::Service(service)) => {
                    SwitchoverTarget::Service(ServiceName(service.clone()))
                }
                Some(switchover_request::Target::Node(name)) => {
                    SwitchoverTarget::Node(node_id(name)?)
                }
                None => return Err(bad("the switchover names no shard, service or node".into())),
            }))
        }
        admin_request::Kind::Operation(operation) => {
            let op = match operation.op.as_str() {
                "lock" => AdminOp::Lock,
                "unlock" => AdminOp::Unlock,
                "shutdown" => AdminOp::Shutdown,
                "lock-instantiation" => AdminOp::LockInstantiation,
                "unlock-instantiation" => AdminOp::UnlockInstantiation,
                "restart" => AdminOp::Restart,
                "repair" => AdminOp::Repair,
                other => return Err(bad(format!("unknown operation {other:?}"))),
            };
            let target = match &operation.target {
                Some(operation_request::Target::Unit(unit)) => {
                    AdminTarget::Unit(UnitName(unit.clone()))
                }
                Some(operation_request::Target::Node(name)) => AdminTarget::Node(node_id(name)?),
                None => return Err(bad("the operation names no unit or node".into())),
            };
            Ok(AdminAction::Admin { target, op })
        }
        admin_request::Kind::Restrict(restrict) => Ok(AdminAction::Restrict {
            shard: ShardName(restrict.shard.clone()),
            admitted_permille: restrict.admitted_permille,
        }),
        admin_request::Kind::Status(_)
        | admin_request::Kind::Events(_)
        | admin_request::Kind::Send(_) => {
            Err(bad("not an operation (this is a bug in tandemd)".into()))
        }
    }
}
