//! The client API: send keyed messages to a service from any program (no unit, no tandemd on
//! the machine needed). A message goes to a node's admin endpoint, which routes the key to one
//! of the service's shards (crc32 of the key, modulo the shard count) and appends it to that
//! shard's stream (forwarding it to the node of the shard's primary); the shard's ACTIVE gets it
//! through [`crate::Unit::message`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), tandem::client::ClientError> {
//! let client = tandem::client::Client::new(vec!["127.0.0.1:7201".parse().unwrap()]);
//! let sent = client.send("counter", b"caller-42", b"+1").await?;
//! println!("went to shard {} ({})", sent.shard, sent.outcome);
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tandem_proto::admin::{admin_request, admin_response, AdminRequest, SendRequest};
use tandem_proto::frame::{encode_frame, FrameDecoder};
use tandem_proto::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest answer accepted.
const ANSWER_LEN_MAX: usize = 1024 * 1024;

/// Why a message could not be handed to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No endpoint could be reached.
    #[error(
        "no tandem node answered ({0}); is the cluster running, and are these its admin addresses?"
    )]
    Unreachable(String),
    /// A node refused the message.
    #[error("tandemd refused the message ({code}): {message}")]
    Refused {
        /// Why ([`AdminCode`](crate::AdminCode): `NotFound`, `BadRequest`, `Refused`, ...).
        code: tandem_core::AdminCode,
        /// For humans.
        message: String,
    },
}

/// Where a message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The shard its key routes to.
    pub shard: String,
    /// `appended` (at `seq`), `forwarded` (to the primary's node) or `held` (no ACTIVE takes
    /// messages right now; it is delivered when one does).
    pub outcome: String,
    /// The stream position, when appended by the node that answered.
    pub seq: u64,
}

/// A client of a tandem cluster: the admin addresses of some of its nodes, tried in turn.
#[derive(Debug, Clone)]
pub struct Client {
    endpoints: Vec<SocketAddr>,
    timeout: Duration,
}

impl Client {
    /// A client trying `endpoints` in order (any node's admin address will do).
    pub fn new(endpoints: Vec<SocketAddr>) -> Self {
        Self {
            endpoints,
            timeout: Duration::from_secs(5),
        }
    }

    /// How long one node may take to answer (default 5 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `payload` to `service`, routed by `key` (the same key always reaches the same
    /// shard). At most 64 KiB of payload.
    pub async fn send(
        &self,
        service: &str,
        key: &[u8],
        payload: &[u8],
    ) -> Result<Sent, ClientError> {
        let request = AdminRequest {
            forwarded: false,
            timeout_ms: 0,
            kind: Some(admin_request::Kind::Send(SendRequest {
                service: service.to_owned(),
                key: key.to_vec(),
                payload: payload.to_vec(),
            })),
        };
        let mut failures = Vec::new();
        for endpoint in &self.endpoints {
            match tokio::time::timeout(self.timeout, ask(*endpoint, &request)).await {
                Ok(Ok(admin_response::Kind::Sent(sent))) => {
                    return Ok(Sent {
                        shard: sent.shard,
                        outcome: sent.outcome,
                        seq: sent.seq,
                    })
                }
                Ok(Ok(admin_response::Kind::Error(error))) => {
                    return Err(ClientError::Refused {
                        code: tandem_proto::admin_wire::decode_admin_code(&error),
                        message: error.message,
                    })
                }
                Ok(Ok(_)) => failures.push(format!("{endpoint}: unexpected answer")),
                Ok(Err(error)) => failures.push(format!("{endpoint}: {error}")),
                Err(_) => failures.push(format!("{endpoint}: no answer in {:?}", self.timeout)),
            }
        }
        Err(ClientError::Unreachable(failures.join("; ")))
    }
}

async fn ask(endpoint: SocketAddr, request: &AdminRequest) -> Result<admin_response::Kind, String> {
    let mut stream = TcpStream::connect(endpoint)
        .await
        .map_err(|error| error.to_string())?;
    let mut out = BytesMut::new();
    encode_frame(&request.encode_to_vec(), &mut out);
    stream
        .write_all(&out)
        .await
        .map_err(|error| error.to_string())?;
    let decoder = FrameDecoder::new(ANSWER_LEN_MAX);
    let mut buffer = BytesMut::new();
    loop {
        if let Some(payload) = decoder
            .decode(&mut buffer)
            .map_err(|error| error.to_string())?
        {
            let response = tandem_proto::admin::AdminResponse::decode(payload.as_ref())
                .map_err(|error| error.to_string())?;
            return response.kind.ok_or_else(|| "an empty answer".to_owned());
        }
        if stream
            .read_buf(&mut buffer)
            .await
            .map_err(|error| error.to_string())?
            == 0
        {
            return Err("the connection closed before an answer".into());
        }
    }
}
