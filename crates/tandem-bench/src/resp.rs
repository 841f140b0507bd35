//! Just enough of Redis's protocol (RESP2) for the benchmark's Redis peer: commands as arrays
//! of bulk strings, and the replies those commands get (status, error, integer, bulk string).
//!
//! Std only, so the fuzz crate includes this file as it is (`fuzz_targets/resp_reply.rs`).
//! Every length is bounded before anything is buffered for it.

/// Longest status, error or integer line accepted, without its `\r\n`.
pub const LINE_LEN_MAX: usize = 64 * 1024;
/// Longest bulk string accepted (an `INFO` reply is a few KiB).
pub const BULK_LEN_MAX: usize = 1 << 20;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Status(String),
    /// `-ERR …`.
    Error(String),
    /// `:1`.
    Integer(i64),
    /// `$5 hello`, or `$-1` (none).
    Bulk(Option<Vec<u8>>),
}

/// Why bytes are not a reply this reader takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// A type byte other than `+ - : $` (arrays are never asked for).
    Type(u8),
    /// A line longer than [`LINE_LEN_MAX`].
    LineTooLong,
    /// An integer or length that is not one.
    BadInteger,
    /// A bulk length above [`BULK_LEN_MAX`] or below -1.
    BulkLen(i64),
    /// A bulk string not followed by `\r\n`.
    BadTerminator,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Type(byte) => write!(f, "unexpected reply type byte {byte:#04x}"),
            Self::LineTooLong => write!(f, "a reply line longer than {LINE_LEN_MAX} bytes"),
            Self::BadInteger => write!(f, "a reply integer that is not one"),
            Self::BulkLen(len) => {
                write!(f, "a bulk reply of length {len} (at most {BULK_LEN_MAX})")
            }
            Self::BadTerminator => write!(f, "a bulk reply not ended by CRLF"),
        }
    }
}

impl std::error::Error for ParseError {}

/// The line at the start of `buf` up to `\r\n`, and the bytes it took with the `\r\n`.
fn line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, ParseError> {
    let window = &buf[..buf.len().min(LINE_LEN_MAX + 2)];
    match window.windows(2).position(|pair| pair == b"\r\n") {
        Some(end) => Ok(Some((&buf[..end], end + 2))),
        None if buf.len() >= LINE_LEN_MAX + 2 => Err(ParseError::LineTooLong),
        None => Ok(None),
    }
}

fn integer(text: &[u8]) -> Result<i64, ParseError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(ParseError::BadInteger)
}

/// Reads one reply from the start of `buf`: the reply and how many bytes it took, or
/// `Ok(None)` if `buf` holds only part of one.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, ParseError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    if !matches!(kind, b'+' | b'-' | b':' | b'$') {
        return Err(ParseError::Type(kind));
    }
    let Some((text, used)) = line(&buf[1..])? else {
        return Ok(None);
    };
    let used = used + 1;
    let lossy = || String::from_utf8_lossy(text).into_owned();
    let reply = match kind {
        b'+' => Reply::Status(lossy()),
        b'-' => Reply::Error(lossy()),
        b':' => Reply::Integer(integer(text)?),
        _ => {
            let len = integer(text)?;
            if len == -1 {
                return Ok(Some((Reply::Bulk(None), used)));
            }
            let Some(len) = usize::try_from(len).ok().filter(|&len| len <= BULK_LEN_MAX) else {
                return Err(ParseError::BulkLen(len));
            };
            let end = used + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ParseError::BadTerminator);
            }
            return Ok(Some((Reply::Bulk(Some(buf[used..end].to_vec())), end + 2)));
        }
    };
    Ok(Some((reply, used)))
}

/// Appends one command (an array of bulk strings) to `out`.
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_of_each_kind_parse_and_say_how_long_they_were() {
        let buf = b"+OK\r\n-ERR no\r\n:12\r\n$5\r\nhello\r\n$-1\r\n";
        let mut at = 0;
        let mut replies = Vec::new();
        while let Some((reply, used)) = parse(&buf[at..]).unwrap() {
            replies.push(reply);
            at += used;
        }
        assert_eq!(at, buf.len());
        assert_eq!(
            replies,
            [
                Reply::Status("OK".into()),
                Reply::Error("ERR no".into()),
                Reply::Integer(12),
                Reply::Bulk(Some(b"hello".to_vec())),
                Reply::Bulk(None),
            ]
        );
    }

    #[test]
    fn a_partial_reply_asks_for_more_and_bad_ones_are_refused() {
        for partial in [
            &b""[..],
            b"+O",
            b"+OK\r",
            b":1",
            b"$5\r\nhel",
            b"$5\r\nhello\r",
        ] {
            assert_eq!(parse(partial), Ok(None), "{partial:?}");
        }
        assert_eq!(parse(b"*1\r\n"), Err(ParseError::Type(b'*')));
        assert_eq!(parse(b":x\r\n"), Err(ParseError::BadInteger));
        assert_eq!(parse(b"$-2\r\n"), Err(ParseError::BulkLen(-2)));
        let too_long = format!("${}\r\n", BULK_LEN_MAX + 1);
        assert_eq!(
            parse(too_long.as_bytes()),
            Err(ParseError::BulkLen(BULK_LEN_MAX as i64 + 1))
        );
        assert_eq!(parse(b"$2\r\nhixx"), Err(ParseError::BadTerminator));
        let endless = vec![b'+'; LINE_LEN_MAX + 3];
        assert_eq!(parse(&endless), Err(ParseError::LineTooLong));
    }

    #[test]
    fn a_command_is_an_array_of_bulk_strings() {
        let mut out = Vec::new();
        command(&mut out, &[b"SET", b"k", b""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }
}
