//! Blocking client of a daemon's admin endpoint, for `tandemctl`, the benchmark and tests.
//!
//! The protocol is one framed [`AdminRequest`] answered by one framed [`AdminResponse`]
//! (see `tandem_proto::frame`). [`call`] opens a connection, asks once and closes;
//! [`AdminConnection`] keeps one connection for several requests, which is what a benchmark
//! measuring request latency wants. Everything read from the socket is treated as untrusted:
//! sizes are bounded, checksums checked, and nothing is unwrapped.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tandem_core::AdminCode;
use tandem_proto::admin::{
    admin_request, admin_response, AdminRequest, AdminResponse, EventRecord, EventsRequest,
    NoopReply, NoopRequest, OperationDone, OperationRequest, Status, StatusRequest,
    SwitchoverRequest,
};
use tandem_proto::admin_wire::decode_admin_code;
use tandem_proto::frame::{frame_bytes, FrameDecoder, FrameError, DEFAULT_FRAME_LEN_MAX};
use tandem_proto::{DecodeError, Message};

/// Largest response accepted: a status of a big cluster can exceed the daemons' default
/// frame limit, and the client is not the side that has to defend its memory.
pub const RESPONSE_LEN_MAX: usize = DEFAULT_FRAME_LEN_MAX * 4;

/// Shortest timeout used even when a caller passes less, because a zero timeout means
/// "block forever" to some socket calls and is an error to others.
const TIMEOUT_MIN: Duration = Duration::from_millis(1);

/// Why an admin request got no usable answer. Each message says what to try next.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// The TCP connection could not be made.
    #[error(
        "cannot reach tandemd admin endpoint at {addr}: {source} (is the daemon running? \
         `tandemctl dev up` starts a local cluster)"
    )]
    Connect {
        /// The admin address.
        addr: SocketAddr,
        /// The connect error.
        #[source]
        source: std::io::Error,
    },
    /// No whole answer arrived in time.
    #[error(
        "tandemd at {addr} did not answer within {} ms (the cluster may be electing a leader \
         or overloaded; retry, or check `tandemctl status` and the daemon's log)",
        .timeout.as_millis()
    )]
    Timeout {
        /// The admin address.
        addr: SocketAddr,
        /// The time allowed.
        timeout: Duration,
    },
    /// Reading or writing the socket failed.
    #[error("i/o error talking to tandemd at {addr}: {source}")]
    Io {
        /// The admin address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The answer's frame was malformed.
    #[error("bad frame from {addr}: {source} (is {addr} really a tandemd admin endpoint?)")]
    Frame {
        /// The admin address.
        addr: SocketAddr,
        /// What was wrong with the frame.
        #[source]
        source: FrameError,
    },
    /// The frame was sound but its payload is not an admin response.
    #[error(
        "undecodable answer from {addr}: {source} (are tandemctl and tandemd the same version?)"
    )]
    Decode {
        /// The admin address.
        addr: SocketAddr,
        /// The decode error.
        #[source]
        source: DecodeError,
    },
    /// The daemon closed the connection before a whole answer arrived.
    #[error(
        "tandemd at {addr} closed the connection before answering (it may be shutting down; \
         retry, or check its log)"
    )]
    Closed {
        /// The admin address.
        addr: SocketAddr,
    },
    /// The daemon answered with an error.
    #[error("tandemd refused the request ({code}): {message}")]
    Refused {
        /// Why, for programs.
        code: AdminCode,
        /// The daemon's explanation.
        message: String,
    },
    /// The daemon answered with a reply of another kind than the request asks for.
    #[error(
        "tandemd answered a {expected} request with {got} (are tandemctl and tandemd the \
         same version?)"
    )]
    UnexpectedReply {
        /// The kind of reply the request calls for.
        expected: &'static str,
        /// What came back instead.
        got: String,
    },
}

/// One open connection to an admin endpoint, for several requests in a row.
#[derive(Debug)]
pub struct AdminConnection {
    /// The address connected to, for error messages.
    addr: SocketAddr,
    /// The socket.
    stream: TcpStream,
    /// Bytes received but not yet decoded; may hold the start of a later frame.
    buffer: BytesMut,
    /// Frame decoder with the client's size limit.
    decoder: FrameDecoder,
}

impl AdminConnection {
    /// Connects to the admin endpoint at `addr`, waiting at most `timeout`.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, AdminClientError> {
        let stream =
            TcpStream::connect_timeout(&addr, timeout.max(TIMEOUT_MIN)).map_err(|source| {
                match source.kind() {
                    ErrorKind::TimedOut | ErrorKind::WouldBlock => {
                        AdminClientError::Timeout { addr, timeout }
                    }
                    _ => AdminClientError::Connect { addr, source },
                }
            })?;
        // Requests are small and latency matters more than packet count.
        stream
            .set_nodelay(true)
            .map_err(|source| AdminClientError::Io { addr, source })?;
        Ok(Self {
            addr,
            stream,
            buffer: BytesMut::with_capacity(4096),
            decoder: FrameDecoder::new(RESPONSE_LEN_MAX),
        })
    }

    /// The address this connection goes to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends `request` and waits at most `timeout` for its whole answer.
    ///
    /// After an error the connection may be out of step with the daemon; drop it.
    pub fn call(
        &mut self,
        request: &AdminRequest,
        timeout: Duration,
    ) -> Result<AdminResponse, AdminClientError> {
        let deadline = Instant::now() + timeout;
        self.send(request, timeout)?;
        let left = deadline.saturating_duration_since(Instant::now());
        self.receive(left).map_err(|error| match error {
            AdminClientError::Timeout { addr, .. } => AdminClientError::Timeout { addr, timeout },
            other => other,
        })
    }

    fn io_error(&self, source: std::io::Error, timeout: Duration) -> AdminClientError {
        let addr = self.addr;
        match source.kind() {
            // A socket timeout shows up as WouldBlock on Unix and TimedOut on Windows.
            ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                AdminClientError::Timeout { addr, timeout }
            }
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof => {
                AdminClientError::Closed { addr }
            }
            _ => AdminClientError::Io { addr, source },
        }
    }

    /// Sends `request`, waiting at most `timeout` for the socket to take it.
    pub fn send(
        &mut self,
        request: &AdminRequest,
        timeout: Duration,
    ) -> Result<(), AdminClientError> {
        let frame = frame_bytes(&request.encode_to_vec());
        self.stream
            .set_write_timeout(Some(timeout.max(TIMEOUT_MIN)))
            .map_err(|error| self.io_error(error, timeout))?;
        self.stream
            .write_all(&frame)
            .map_err(|error| self.io_error(error, timeout))
    }

    /// Reads one whole response, waiting at most `timeout`.
    pub fn receive(&mut self, timeout: Duration) -> Result<AdminResponse, AdminClientError> {
        let addr = self.addr;
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.decoder.decode(&mut self.buffer) {
                Ok(Some(payload)) => {
                    return tandem_proto::decode_admin_response(&payload)
                        .map_err(|source| AdminClientError::Decode { addr, source });
                }
                Ok(None) => {}
                Err(source) => return Err(AdminClientError::Frame { addr, source }),
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .filter(|left| *left >= TIMEOUT_MIN)
                .ok_or(AdminClientError::Timeout { addr, timeout })?;
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|error| self.io_error(error, timeout))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(AdminClientError::Closed { addr }),
                Ok(read) => self.buffer.extend_from_slice(&chunk[..read]),
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => return Err(self.io_error(error, timeout)),
            }
        }
    }
}

/// Sends one request to the admin endpoint at `addr` and returns its answer, waiting at most
/// `timeout` for the connection and again at most `timeout` for the answer.
pub fn call(
    addr: SocketAddr,
    request: &AdminRequest,
    timeout: Duration,
) -> Result<AdminResponse, AdminClientError> {
    AdminConnection::connect(addr, timeout)?.call(request, timeout)
}

/// Names the kind of a response, for [`AdminClientError::UnexpectedReply`].
fn describe(kind: &Option<admin_response::Kind>) -> String {
    match kind {
        None => "an empty reply".into(),
        Some(admin_response::Kind::Status(_)) => "a status reply".into(),
        Some(admin_response::Kind::Noop(_)) => "a noop reply".into(),
        Some(admin_response::Kind::Error(_)) => "an error".into(),
        Some(admin_response::Kind::Done(_)) => "an operation reply".into(),
        Some(admin_response::Kind::Event(_)) => "an event".into(),
        Some(admin_response::Kind::EventsEnd(_)) => "the end of the events".into(),
        Some(admin_response::Kind::Sent(_)) => "a send reply".into(),
    }
}

impl AdminClientError {
    /// Whether another daemon of the cluster would answer the same: a refusal on the
    /// request's merits (`not_found`, `bad_request`, `invalid`, ...), not one of this daemon's
    /// moment (no leader, shutting down, no answer in time).
    pub fn is_final(&self) -> bool {
        match self {
            AdminClientError::Refused { code, .. } => !matches!(
                code,
                AdminCode::NoLeader
                    | AdminCode::NotLeader
                    | AdminCode::Timeout
                    | AdminCode::ShuttingDown
                    | AdminCode::Lagged
                    | AdminCode::Unknown
            ),
            _ => false,
        }
    }
}

/// Turns an error answer into [`AdminClientError::Refused`], an empty one into
/// [`AdminClientError::UnexpectedReply`], and passes other answers on.
fn refused_or(
    response: AdminResponse,
    expected: &'static str,
) -> Result<admin_response::Kind, AdminClientError> {
    match response.kind {
        Some(admin_response::Kind::Error(error)) => Err(AdminClientError::Refused {
            code: decode_admin_code(&error),
            message: error.message,
        }),
        Some(kind) => Ok(kind),
        None => Err(AdminClientError::UnexpectedReply {
            expected,
            got: describe(&None),
        }),
    }
}

/// Asks the daemon at `addr` for the cluster status (it forwards to the leader when it can):
/// every shard.
pub fn status(addr: SocketAddr, timeout: Duration) -> Result<Status, AdminClientError> {
    status_with(addr, timeout, StatusRequest::default(), false)
}

/// Asks the daemon at `addr` for the status as it sees it, never forwarded: how to reach
/// every node's own checkpoint replicas.
pub fn local_status(addr: SocketAddr, timeout: Duration) -> Result<Status, AdminClientError> {
    status_with(addr, timeout, StatusRequest::default(), true)
}

/// Asks the daemon at `addr` for the status `request` describes (filters, a summary), from
/// the leader or, with `local`, as that daemon sees it. A daemon from before the filters
/// existed answers with every shard and no `summary`: see [`crate::status_view::narrow`].
pub fn status_with(
    addr: SocketAddr,
    timeout: Duration,
    request: StatusRequest,
    local: bool,
) -> Result<Status, AdminClientError> {
    let request = AdminRequest {
        forwarded: local,
        timeout_ms: 0,
        kind: Some(admin_request::Kind::Status(request)),
    };
    match refused_or(call(addr, &request, timeout)?, "status")? {
        admin_response::Kind::Status(status) => Ok(status),
        other => Err(AdminClientError::UnexpectedReply {
            expected: "status",
            got: describe(&Some(other)),
        }),
    }
}

/// Hands the daemon at `addr` a keyed message for `service`'s stream.
pub fn send(
    addr: SocketAddr,
    timeout: Duration,
    service: &str,
    key: &[u8],
    payload: &[u8],
) -> Result<tandem_proto::admin::SendReply, AdminClientError> {
    let request = AdminRequest {
        forwarded: false,
        timeout_ms: 0,
        kind: Some(admin_request::Kind::Send(
            tandem_proto::admin::SendRequest {
                service: service.to_owned(),
                key: key.to_vec(),
                payload: payload.to_vec(),
            },
        )),
    };
    match refused_or(call(addr, &request, timeout)?, "send")? {
        admin_response::Kind::Sent(sent) => Ok(sent),
        other => Err(AdminClientError::UnexpectedReply {
            expected: "send",
            got: describe(&Some(other)),
        }),
    }
}

/// Asks the daemon at `addr` to commit a no-op entry through Raft; answers once applied.
pub fn noop(addr: SocketAddr, timeout: Duration) -> Result<NoopReply, AdminClientError> {
    let request = AdminRequest {
        forwarded: false,
        timeout_ms: 0,
        kind: Some(admin_request::Kind::Noop(NoopRequest {})),
    };
    match refused_or(call(addr, &request, timeout)?, "noop")? {
        admin_response::Kind::Noop(reply) => Ok(reply),
        other => Err(AdminClientError::UnexpectedReply {
            expected: "noop",
            got: describe(&Some(other)),
        }),
    }
}

/// Runs an operation (a switchover or an AMF operation) at `addr` and waits at most `timeout`
/// for it to complete; the daemon answers when it is done, or says what is still outstanding.
pub fn operation(
    addr: SocketAddr,
    kind: admin_request::Kind,
    timeout: Duration,
) -> Result<OperationDone, AdminClientError> {
    let request = AdminRequest {
        forwarded: false,
        timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
        kind: Some(kind),
    };
    // The connection waits a little longer than the daemon, which answers at its deadline.
    match refused_or(
        call(addr, &request, timeout + Duration::from_secs(1))?,
        "operation",
    )? {
        admin_response::Kind::Done(done) => Ok(done),
        other => Err(AdminClientError::UnexpectedReply {
            expected: "operation",
            got: describe(&Some(other)),
        }),
    }
}

/// A switchover request of `target`.
pub fn switchover_kind(
    target: tandem_proto::admin::switchover_request::Target,
) -> admin_request::Kind {
    admin_request::Kind::Switchover(SwitchoverRequest {
        target: Some(target),
    })
}

/// An AMF operation request (`op` is `lock`, `unlock`, `shutdown`, `lock-instantiation`,
/// `unlock-instantiation`, `restart` or `repair`).
pub fn operation_kind(
    target: tandem_proto::admin::operation_request::Target,
    op: &str,
) -> admin_request::Kind {
    admin_request::Kind::Operation(OperationRequest {
        target: Some(target),
        op: op.to_owned(),
    })
}

/// The event log of the daemon at `addr`, as a stream of records.
#[derive(Debug)]
pub struct EventStream {
    connection: AdminConnection,
}

/// What the next read of an [`EventStream`] gave.
#[derive(Debug)]
pub enum EventItem {
    /// An event.
    Event(EventRecord),
    /// The end of the backlog (without `follow`); the next sequence number.
    End(u64),
    /// Nothing within the wait (with `follow`).
    Idle,
}

impl EventStream {
    /// Opens the log at `addr` from `since_seq`; with `follow`, new events keep coming.
    pub fn open(
        addr: SocketAddr,
        since_seq: u64,
        follow: bool,
        timeout: Duration,
    ) -> Result<Self, AdminClientError> {
        let mut connection = AdminConnection::connect(addr, timeout)?;
        let request = AdminRequest {
            forwarded: false,
            timeout_ms: 0,
            kind: Some(admin_request::Kind::Events(EventsRequest {
                since_seq,
                follow,
            })),
        };
        connection.send(&request, timeout)?;
        Ok(Self { connection })
    }

    /// The next item, waiting at most `wait`.
    pub fn next(&mut self, wait: Duration) -> Result<EventItem, AdminClientError> {
        let response = match self.connection.receive(wait) {
            Ok(response) => response,
            Err(AdminClientError::Timeout { .. }) => return Ok(EventItem::Idle),
            Err(error) => return Err(error),
        };
        match refused_or(response, "event")? {
            admin_response::Kind::Event(record) => Ok(EventItem::Event(record)),
            admin_response::Kind::EventsEnd(end) => Ok(EventItem::End(end.next_seq)),
            other => Err(AdminClientError::UnexpectedReply {
                expected: "event",
                got: describe(&Some(other)),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread::JoinHandle;

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// Serves one connection on a fresh loopback port: reads one request frame (returned by
    /// the thread), then does whatever `answer` says with the stream.
    fn serve_once(
        answer: impl FnOnce(&mut TcpStream) + Send + 'static,
        read_request: bool,
    ) -> (SocketAddr, JoinHandle<Option<AdminRequest>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = None;
            if read_request {
                let decoder = FrameDecoder::new(DEFAULT_FRAME_LEN_MAX);
                let mut buffer = BytesMut::new();
                let mut chunk = [0u8; 1024];
                request = loop {
                    if let Some(payload) = decoder.decode(&mut buffer).unwrap() {
                        break Some(tandem_proto::decode_admin_request(&payload).unwrap());
                    }
                    let read = stream.read(&mut chunk).unwrap();
                    assert!(read > 0, "client closed before sending a whole request");
                    buffer.extend_from_slice(&chunk[..read]);
                };
            }
            answer(&mut stream);
            request
        });
        (addr, handle)
    }

    fn reply(response: AdminResponse) -> impl FnOnce(&mut TcpStream) + Send + 'static {
        move |stream| {
            let frame = frame_bytes(&response.encode_to_vec());
            // Two writes, to check the client reassembles a frame split across reads.
            stream.write_all(&frame[..5]).unwrap();
            stream.flush().unwrap();
            stream.write_all(&frame[5..]).unwrap();
        }
    }

    fn sample_status() -> Status {
        Status {
            cluster: "demo".into(),
            answered_by: "n2".into(),
            leader: "n1".into(),
            term: 3,
            commit_index: 42,
            applied_index: 42,
            nodes: Vec::new(),
            from_leader: true,
            services: Vec::new(),
            units: Vec::new(),
            shards: Vec::new(),
            replicas: Vec::new(),
            sessions: Vec::new(),
            summary: None,
        }
    }

    #[test]
    fn status_round_trip() {
        let response = AdminResponse {
            kind: Some(admin_response::Kind::Status(sample_status())),
        };
        let (addr, server) = serve_once(reply(response), true);
        let status = status(addr, TIMEOUT).unwrap();
        assert_eq!(status, sample_status());
        let request = server.join().unwrap().unwrap();
        assert!(matches!(
            request.kind,
            Some(admin_request::Kind::Status(StatusRequest { .. }))
        ));
        assert!(!request.forwarded);
    }

    #[test]
    fn noop_round_trip() {
        let answer = NoopReply {
            index: 7,
            term: 2,
            leader: "n1".into(),
        };
        let response = AdminResponse {
            kind: Some(admin_response::Kind::Noop(answer.clone())),
        };
        let (addr, server) = serve_once(reply(response), true);
        assert_eq!(noop(addr, TIMEOUT).unwrap(), answer);
        let request = server.join().unwrap().unwrap();
        assert!(matches!(request.kind, Some(admin_request::Kind::Noop(_))));
    }

    #[test]
    fn error_answer_is_refused() {
        let response = tandem_proto::admin_wire::error_response(
            AdminCode::NoLeader,
            "no leader yet; retry in a moment",
        );
        let (addr, server) = serve_once(reply(response), true);
        let error = status(addr, TIMEOUT).unwrap_err();
        assert!(
            matches!(
                &error,
                AdminClientError::Refused {
                    code: AdminCode::NoLeader,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("no leader yet"));
        server.join().unwrap();
    }

    #[test]
    fn wrong_kind_is_unexpected() {
        let response = AdminResponse {
            kind: Some(admin_response::Kind::Status(sample_status())),
        };
        let (addr, server) = serve_once(reply(response), true);
        let error = noop(addr, TIMEOUT).unwrap_err();
        assert!(
            matches!(
                error,
                AdminClientError::UnexpectedReply {
                    expected: "noop",
                    ..
                }
            ),
            "{error:?}"
        );
        server.join().unwrap();

        let (addr, server) = serve_once(reply(AdminResponse { kind: None }), true);
        let error = status(addr, TIMEOUT).unwrap_err();
        assert!(
            matches!(error, AdminClientError::UnexpectedReply { .. }),
            "{error:?}"
        );
        server.join().unwrap();
    }

    #[test]
    fn corrupt_crc_is_a_frame_error() {
        let corrupt = |stream: &mut TcpStream| {
            let response = AdminResponse {
                kind: Some(admin_response::Kind::Status(sample_status())),
            };
            let mut frame = frame_bytes(&response.encode_to_vec()).to_vec();
            let last = frame.len() - 1;
            frame[last] ^= 0xff;
            stream.write_all(&frame).unwrap();
        };
        let (addr, server) = serve_once(corrupt, true);
        let error = status(addr, TIMEOUT).unwrap_err();
        assert!(
            matches!(
                error,
                AdminClientError::Frame {
                    source: FrameError::BadCrc { .. },
                    ..
                }
            ),
            "{error:?}"
        );
        server.join().unwrap();
    }

    #[test]
    fn oversize_frame_is_refused_from_its_header() {
        let oversize = |stream: &mut TcpStream| {
            let mut header = Vec::new();
            header.extend_from_slice(&u32::MAX.to_be_bytes());
            header.extend_from_slice(&0u32.to_be_bytes());
            stream.write_all(&header).unwrap();
        };
        let (addr, server) = serve_once(oversize, true);
        let error = status(addr, TIMEOUT).unwrap_err();
        assert!(
            matches!(
                error,
                AdminClientError::Frame {
                    source: FrameError::TooLarge { .. },
                    ..
                }
            ),
            "{error:?}"
        );
        server.join().unwrap();
    }

    #[test]
    fn garbage_payload_is_a_decode_error() {
        let garbage = |stream: &mut TcpStream| {
            // A field with wire type 7 does not exist, so this cannot decode.
            stream.write_all(&frame_bytes(&[0xff, 0xff, 0xff])).unwrap();
        };
        let (addr, server) = serve_once(garbage, true);
        let error = status(addr, TIMEOUT).unwrap_err();
        assert!(
            matches!(error, AdminClientError::Decode { .. }),
            "{error:?}"
        );
        server.join().unwrap();
    }

    #[test]
    fn immediate_close_is_closed() {
        // The server drops the connection without reading; the client sees EOF (or a reset).
        let (addr, server) = serve_once(|_| {}, false);
        let error = status(addr, TIMEOUT).unwrap_err();
        assert!(
            matches!(error, AdminClientError::Closed { .. }),
            "{error:?}"
        );
        server.join().unwrap();
    }

    #[test]
    fn close_mid_frame_is_closed() {
        let partial = |stream: &mut TcpStream| {
            let frame = frame_bytes(&[1, 2, 3, 4]);
            stream.write_all(&frame[..6]).unwrap();
        };
        let (addr, server) = serve_once(partial, true);
        let error = status(addr, TIMEOUT).unwrap_err();
        assert!(
            matches!(error, AdminClientError::Closed { .. }),
            "{error:?}"
        );
        server.join().unwrap();
    }

    #[test]
    fn silent_server_times_out() {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        // Keep the connection open and silent until the client has given up.
        let (addr, server) = serve_once(
            move |_| {
                let _ = wait.recv_timeout(Duration::from_secs(10));
            },
            true,
        );
        let started = Instant::now();
        let error = status(addr, Duration::from_millis(200)).unwrap_err();
        assert!(
            matches!(error, AdminClientError::Timeout { .. }),
            "{error:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        release.send(()).unwrap();
        server.join().unwrap();
    }

    #[test]
    fn nothing_listening_is_connect_error_with_a_hint() {
        // Bind then drop, so the port is (almost certainly) closed.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let error = status(addr, TIMEOUT).unwrap_err();
        assert!(
            matches!(error, AdminClientError::Connect { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("tandemctl dev up"));
    }

    #[test]
    fn one_connection_carries_several_requests() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let decoder = FrameDecoder::new(DEFAULT_FRAME_LEN_MAX);
            let mut buffer = BytesMut::new();
            let mut chunk = [0u8; 1024];
            for index in 1..=3u64 {
                let payload = loop {
                    if let Some(payload) = decoder.decode(&mut buffer).unwrap() {
                        break payload;
                    }
                    let read = stream.read(&mut chunk).unwrap();
                    buffer.extend_from_slice(&chunk[..read]);
                };
                tandem_proto::decode_admin_request(&payload).unwrap();
                let response = AdminResponse {
                    kind: Some(admin_response::Kind::Noop(NoopReply {
                        index,
                        term: 1,
                        leader: "n1".into(),
                    })),
                };
                stream
                    .write_all(&frame_bytes(&response.encode_to_vec()))
                    .unwrap();
            }
        });
        let mut connection = AdminConnection::connect(addr, TIMEOUT).unwrap();
        let request = AdminRequest {
            forwarded: false,
            timeout_ms: 0,
            kind: Some(admin_request::Kind::Noop(NoopRequest {})),
        };
        for index in 1..=3u64 {
            let response = connection.call(&request, TIMEOUT).unwrap();
            assert!(
                matches!(response.kind, Some(admin_response::Kind::Noop(NoopReply { index: i, .. })) if i == index)
            );
        }
        server.join().unwrap();
    }
}
