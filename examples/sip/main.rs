//! `sip`: a SIP call server (UAS) on tandem. It answers calls on its shard's UDP ingress
//! (`tandemctl dev up --app sip` puts it on 127.0.0.1:5060) and survives switchovers and
//! failovers with every established call intact.
//!
//! - INVITE: `100 Trying`, `180 Ringing`, `200 OK` with an SDP answer; the dialog (Call-ID, tags,
//!   the 200 OK to repeat for a retransmitted INVITE) goes into the shard's checkpoint in the
//!   same `sync` commit that consumes the INVITE from the stream, *before* any response leaves.
//!   Under processing restriction (`tandemctl restrict sip-0 0.5`), a new INVITE that is not
//!   admitted gets `503 Service Unavailable`.
//! - ACK confirms the dialog; BYE ends it (`200 OK`, or `481` for an unknown dialog); CANCEL of
//!   an answered INVITE gets `200 OK` and changes nothing (RFC 3261 9.2); OPTIONS gets `200 OK`;
//!   other methods `405`.
//!
//! Responses go to the request's source address (symmetric response routing, as SIP over UDP
//! behind tandem's ingress needs), from the ingress address. A STANDBY holds every dialog in its
//! replica, so the BYE of a call set up before a switch gets its `200 OK` from the new ACTIVE.
//!
//! Run by tandemd as a unit of a service, never by hand.

use tandem::data::{Message, Origin};
use tandem::{Context, HookError, Role, ShardName, Unit};

/// Largest SIP message handled (the stream admits 64 KiB).
const MESSAGE_LEN_MAX: usize = 64 * 1024;
/// Methods this UAS implements.
const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS";

/// A parsed SIP request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request {
    method: String,
    /// Header (name as received, value), in order.
    headers: Vec<(String, String)>,
}

impl Request {
    /// The first value of header `name` (long or compact form, case-insensitive).
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| same_header(header, name))
            .map(|(_, value)| value.as_str())
    }

    /// Every value of header `name`, in order (a Via header may also carry several, comma
    /// separated; they are kept as received).
    fn all(&self, name: &str) -> impl Iterator<Item = &str> + '_ {
        let name = name.to_owned();
        self.headers
            .iter()
            .filter(move |(header, _)| same_header(header, &name))
            .map(|(_, value)| value.as_str())
    }
}

/// Whether header names `a` and `b` are the same header (RFC 3261 compact forms included).
fn same_header(a: &str, b: &str) -> bool {
    fn long(name: &str) -> String {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "v" => "via".into(),
            "f" => "from".into(),
            "t" => "to".into(),
            "i" => "call-id".into(),
            "m" => "contact".into(),
            "l" => "content-length".into(),
            "c" => "content-type".into(),
            _ => lower,
        }
    }
    long(a) == long(b)
}

/// Parses a SIP request; `None` for a response or something that is not SIP.
fn parse(bytes: &[u8]) -> Option<Request> {
    if bytes.len() > MESSAGE_LEN_MAX {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let head = text.split("\r\n\r\n").next()?;
    let mut lines = head.split("\r\n");
    let first = lines.next()?;
    let mut parts = first.split(' ');
    let method = parts.next()?.to_owned();
    let _uri = parts.next()?;
    if parts.next()? != "SIP/2.0" || method.is_empty() || method.starts_with("SIP/") {
        return None;
    }
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.starts_with(' ') || line.starts_with('\t') {
            // A folded continuation of the previous header.
            if let Some((_, value)) = headers.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    Some(Request { method, headers })
}

/// A stable tag for `call_id` (FNV-1a): the same after a switchover, on any unit.
fn tag_of(call_id: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in call_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Builds a response to `request`. `to_tag` is added to To when it has none.
fn response(
    request: &Request,
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
    extra: &str,
    body: &str,
) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for via in request.all("via") {
        out.push_str(&format!("Via: {via}\r\n"));
    }
    if let Some(from) = request.header("from") {
        out.push_str(&format!("From: {from}\r\n"));
    }
    if let Some(to) = request.header("to") {
        match to_tag {
            Some(tag) if !to.contains(";tag=") => out.push_str(&format!("To: {to};tag={tag}\r\n")),
            _ => out.push_str(&format!("To: {to}\r\n")),
        }
    }
    for name in ["call-id", "cseq"] {
        if let Some(value) = request.header(name) {
            let shown = if name == "call-id" { "Call-ID" } else { "CSeq" };
            out.push_str(&format!("{shown}: {value}\r\n"));
        }
    }
    out.push_str("Server: tandem-sip\r\n");
    out.push_str(extra);
    out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    out
}

/// The SDP answer of a call.
fn sdp() -> String {
    "v=0\r\no=tandem 1 1 IN IP4 127.0.0.1\r\ns=tandem\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
     m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        .to_owned()
}

fn dialog_key(call_id: &str) -> String {
    format!("dialog/{call_id}")
}

struct Sip;

impl Sip {
    /// Handles one request: returns the responses to send once the commit is done.
    async fn handle(
        &self,
        ctx: &Context,
        shard: &ShardName,
        request: &Request,
        seq: u64,
    ) -> Result<Vec<String>, HookError> {
        let checkpoint = ctx.checkpoint(shard);
        let fail = |error: tandem::DataError| HookError::new(error.to_string());
        let Some(call_id) = request.header("call-id").map(str::to_owned) else {
            // Not a well-formed request: nothing to answer to (no Call-ID to echo).
            checkpoint
                .transaction()
                .consume(seq)
                .commit_sync()
                .await
                .map_err(fail)?;
            return Ok(Vec::new());
        };
        let key = dialog_key(&call_id);
        let dialog = checkpoint.get(&key).await.map_err(fail)?;
        let tag = tag_of(&call_id);
        let (transaction, responses) = match request.method.as_str() {
            "INVITE" => match dialog {
                // A retransmitted INVITE, or a re-INVITE: the same answer again.
                Some(stored) => {
                    let answer = String::from_utf8_lossy(&stored)
                        .split_once('\n')
                        .map(|(_, answer)| answer.to_owned())
                        .unwrap_or_default();
                    (checkpoint.transaction(), vec![answer])
                }
                None => {
                    let admit = ctx.admitted(shard);
                    let draw =
                        (u64::from_str_radix(&tag[..4], 16).unwrap_or(0) % 1000) as f64 / 1000.0;
                    if draw >= admit {
                        let refuse = response(
                            request,
                            503,
                            "Service Unavailable",
                            Some(&tag),
                            "Retry-After: 5\r\n",
                            "",
                        );
                        (checkpoint.transaction(), vec![refuse])
                    } else {
                        let trying = response(request, 100, "Trying", None, "", "");
                        let ringing = response(request, 180, "Ringing", Some(&tag), "", "");
                        let contact = "Contact: <sip:tandem@127.0.0.1:5060>\r\nContent-Type: application/sdp\r\n";
                        let ok = response(request, 200, "OK", Some(&tag), contact, &sdp());
                        let stored = format!("answered\n{ok}");
                        (
                            checkpoint.transaction().put(key, stored),
                            vec![trying, ringing, ok],
                        )
                    }
                }
            },
            "ACK" => match dialog {
                Some(stored) if stored.starts_with(b"answered\n") => {
                    let confirmed =
                        [b"confirmed\n".as_slice(), &stored[b"answered\n".len()..]].concat();
                    (checkpoint.transaction().put(key, confirmed), Vec::new())
                }
                // The ACK of a refused INVITE, or a repeated one.
                _ => (checkpoint.transaction(), Vec::new()),
            },
            "BYE" => match dialog {
                Some(_) => (
                    checkpoint.transaction().delete(key),
                    vec![response(request, 200, "OK", Some(&tag), "", "")],
                ),
                None => (
                    checkpoint.transaction(),
                    vec![response(
                        request,
                        481,
                        "Call/Transaction Does Not Exist",
                        Some(&tag),
                        "",
                        "",
                    )],
                ),
            },
            "CANCEL" => match dialog {
                // The INVITE was answered already: the CANCEL changes nothing.
                Some(_) => (
                    checkpoint.transaction(),
                    vec![response(request, 200, "OK", Some(&tag), "", "")],
                ),
                None => (
                    checkpoint.transaction(),
                    vec![response(
                        request,
                        481,
                        "Call/Transaction Does Not Exist",
                        Some(&tag),
                        "",
                        "",
                    )],
                ),
            },
            "OPTIONS" => (
                checkpoint.transaction(),
                vec![response(
                    request,
                    200,
                    "OK",
                    Some(&tag),
                    &format!("Allow: {ALLOW}\r\nAccept: application/sdp\r\n"),
                    "",
                )],
            ),
            _ => (
                checkpoint.transaction(),
                vec![response(
                    request,
                    405,
                    "Method Not Allowed",
                    Some(&tag),
                    &format!("Allow: {ALLOW}\r\n"),
                    "",
                )],
            ),
        };
        // The dialog change and the stream position in one sync commit: the STANDBY has the
        // call before the caller hears of it.
        transaction.consume(seq).commit_sync().await.map_err(fail)?;
        Ok(responses)
    }
}

impl Unit for Sip {
    async fn assign(
        &mut self,
        ctx: &Context,
        shard: &ShardName,
        role: Role,
        epoch: u64,
    ) -> Result<(), HookError> {
        tracing::info!(unit = ctx.unit(), %shard, %role, epoch, "role assigned");
        Ok(())
    }

    async fn message(
        &mut self,
        ctx: &Context,
        shard: &ShardName,
        message: Message,
    ) -> Result<(), HookError> {
        let Some(request) = parse(&message.payload) else {
            // A response (SIPp answering something) or noise: consume, no answer.
            ctx.checkpoint(shard)
                .transaction()
                .consume(message.seq)
                .commit_sync()
                .await
                .map_err(|error| HookError::new(error.to_string()))?;
            return Ok(());
        };
        let responses = self.handle(ctx, shard, &request, message.seq).await?;
        if message.origin == Origin::Udp {
            for response in responses {
                let _ = ctx.reply(shard, &message, response).await;
            }
        }
        Ok(())
    }

    async fn restrict(
        &mut self,
        ctx: &Context,
        shard: &ShardName,
        admit: Option<f64>,
    ) -> Result<(), HookError> {
        tracing::info!(unit = ctx.unit(), %shard, ?admit, "processing restriction: new INVITEs beyond it get 503");
        Ok(())
    }
}

fn main() {
    tracing_subscriber::fmt().with_ansi(false).init();
    // One thread with the node's idle polling (`cluster.unit_idle_poll_us`): see `tandem::runtime`.
    let result = tandem::runtime().and_then(|runtime| runtime.block_on(tandem::run(Sip)));
    if let Err(error) = result {
        eprintln!("sip: {error}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1\r\n\
From: sipp <sip:sipp@127.0.0.1:5061>;tag=1\r\n\
To: service <sip:service@127.0.0.1:5060>\r\n\
Call-ID: 1-42@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: sip:sipp@127.0.0.1:5061\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn a_request_parses_and_a_response_echoes_its_headers() {
        let request = parse(INVITE.as_bytes()).expect("parses");
        assert_eq!(request.method, "INVITE");
        assert_eq!(request.header("i"), Some("1-42@127.0.0.1"));
        let ok = response(&request, 200, "OK", Some("abc"), "", "x");
        assert!(ok.starts_with("SIP/2.0 200 OK\r\n"));
        assert!(ok.contains("Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1\r\n"));
        assert!(ok.contains("To: service <sip:service@127.0.0.1:5060>;tag=abc\r\n"));
        assert!(ok.contains("CSeq: 1 INVITE\r\n"));
        assert!(ok.ends_with("Content-Length: 1\r\n\r\nx"));
    }

    #[test]
    fn responses_and_garbage_are_not_requests() {
        assert!(parse(b"SIP/2.0 200 OK\r\nCall-ID: x\r\n\r\n").is_none());
        assert!(parse(b"\xff\xfe").is_none());
        assert!(parse(b"INVITE\r\n\r\n").is_none());
    }

    #[test]
    fn the_tag_of_a_call_is_stable() {
        assert_eq!(tag_of("a"), tag_of("a"));
        assert_ne!(tag_of("a"), tag_of("b"));
    }
}
