//! Input layouts shared by the fuzz targets and the seed generator (`examples/make_seeds.rs`),
//! so that the seeds the generator writes are read by the targets the way it meant them.
//!
//! Targets that take a plain byte string (`peer_envelope`, `admin_request`, `raft_command`)
//! need no layout. `frame_decoder` and `wal_replay` read a small header from the front of the
//! input and treat the rest as the byte stream or the file content.

/// `frame_decoder` input: `[limit: u16 BE][chunk seed: u8][chunk max: u8][stream...]`.
pub mod frame_input {
    /// Header bytes before the stream.
    pub const HEADER: usize = 4;

    /// The limit value that stands for `tandem_proto::frame::DEFAULT_FRAME_LEN_MAX`.
    pub const LIMIT_DEFAULT: u16 = u16::MAX;

    /// The decoded input.
    #[derive(Debug)]
    pub struct FrameInput<'a> {
        /// Largest payload the decoder accepts.
        pub limit: usize,
        /// The byte stream as it arrives, cut into these chunk lengths (each ≥ 1).
        pub chunks: Vec<&'a [u8]>,
        /// The whole stream.
        pub stream: &'a [u8],
    }

    /// Splits `data` into the decoder limit, the stream and its chunking.
    pub fn parse(data: &[u8]) -> Option<FrameInput<'_>> {
        if data.len() < HEADER {
            return None;
        }
        let limit_raw = u16::from_be_bytes([data[0], data[1]]);
        let limit = if limit_raw == LIMIT_DEFAULT {
            tandem_proto::frame::DEFAULT_FRAME_LEN_MAX
        } else {
            usize::from(limit_raw)
        };
        // xorshift over the seed gives chunk lengths in 1..=chunk_max+1, so the fuzzer controls
        // the chunking with two bytes instead of one byte per chunk.
        let mut state = u32::from(data[2]) | 0x9e37_7900;
        let chunk_max = usize::from(data[3]) + 1;
        let stream = &data[HEADER..];
        let mut chunks = Vec::new();
        let mut rest = stream;
        while !rest.is_empty() {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let len = (state as usize % chunk_max + 1).min(rest.len());
            let (chunk, tail) = rest.split_at(len);
            chunks.push(chunk);
            rest = tail;
        }
        Some(FrameInput {
            limit,
            chunks,
            stream,
        })
    }

    /// Builds an input: header then stream.
    pub fn build(limit: u16, chunk_seed: u8, chunk_max: u8, stream: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + stream.len());
        out.extend_from_slice(&limit.to_be_bytes());
        out.push(chunk_seed);
        out.push(chunk_max);
        out.extend_from_slice(stream);
        out
    }
}

/// `wal_replay` input:
/// `[flags: u8]` then, if `flags & SPLIT`, `[split: u16 BE]`, then, if `flags & SNAPSHOT`,
/// `[snapshot index: u32 BE][snapshot term: u32 BE]`, then the segment bytes. With `SPLIT`,
/// the segment bytes are cut at `split` (clamped) into `wal-…1.log` and `wal-…2.log`;
/// otherwise they all go to `wal-…1.log`. With `SNAPSHOT`, a valid snapshot file with that
/// index and term (index 0 means none) is written next to the segments.
pub mod wal_input {
    /// Two segments instead of one.
    pub const SPLIT: u8 = 0x01;
    /// A snapshot file too.
    pub const SNAPSHOT: u8 = 0x02;

    /// Name of segment `seq`, as tandem-raft's storage spells it.
    pub fn segment_name(seq: u64) -> String {
        format!("wal-{seq:016}.log")
    }

    /// Name of the snapshot at `index`, as tandem-raft's storage spells it.
    pub fn snapshot_name(index: u64) -> String {
        format!("snap-{index:020}.snap")
    }

    /// The decoded input.
    #[derive(Debug)]
    pub struct WalInput<'a> {
        /// Content of each segment file, in sequence order starting at 1.
        pub segments: Vec<&'a [u8]>,
        /// Index and term of the snapshot file to write, if any.
        pub snapshot: Option<(u64, u64)>,
    }

    /// Reads the layout; `None` when the header is cut short.
    pub fn parse(data: &[u8]) -> Option<WalInput<'_>> {
        let (&flags, mut rest) = data.split_first()?;
        let mut split = None;
        if flags & SPLIT != 0 {
            let raw = rest.get(..2)?;
            split = Some(usize::from(u16::from_be_bytes([raw[0], raw[1]])));
            rest = &rest[2..];
        }
        let mut snapshot = None;
        if flags & SNAPSHOT != 0 {
            let raw = rest.get(..8)?;
            let index = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
            let term = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
            if index > 0 {
                snapshot = Some((u64::from(index), u64::from(term)));
            }
            rest = &rest[8..];
        }
        let segments = match split {
            Some(at) => {
                let (first, second) = rest.split_at(at.min(rest.len()));
                vec![first, second]
            }
            None => vec![rest],
        };
        Some(WalInput { segments, snapshot })
    }

    /// Builds an input from segment contents (one or two) and an optional snapshot.
    ///
    /// # Panics
    /// With more than two segments, a first segment longer than `u16::MAX`, or snapshot
    /// figures beyond `u32`.
    pub fn build(segments: &[&[u8]], snapshot: Option<(u64, u64)>) -> Vec<u8> {
        assert!(!segments.is_empty() && segments.len() <= 2);
        let mut flags = 0;
        if segments.len() == 2 {
            flags |= SPLIT;
        }
        if snapshot.is_some() {
            flags |= SNAPSHOT;
        }
        let mut out = vec![flags];
        if segments.len() == 2 {
            let split = u16::try_from(segments[0].len()).expect("first segment fits in u16");
            out.extend_from_slice(&split.to_be_bytes());
        }
        if let Some((index, term)) = snapshot {
            let index = u32::try_from(index).expect("snapshot index fits in u32");
            let term = u32::try_from(term).expect("snapshot term fits in u32");
            out.extend_from_slice(&index.to_be_bytes());
            out.extend_from_slice(&term.to_be_bytes());
        }
        for segment in segments {
            out.extend_from_slice(segment);
        }
        out
    }
}
