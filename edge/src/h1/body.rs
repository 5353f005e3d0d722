//! Reading message bodies, the same way on both sides: a declared length, the chunked
//! coding (RFC 9112 §7.1) with one strictness for requests and answers, or (answers only)
//! everything until the connection closes.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncRead;

use super::common::{KEEP_BUFFER, MAX_CHUNK_EXTENSIONS, MAX_CHUNK_LINE, Read, Timer, read_more};

/// Why a body could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// The connection closed (or failed) before the body's end.
    Closed,
    /// The connection's deadline passed first.
    TimedOut,
    /// The body is over the limit it is read with.
    TooLarge,
    /// The body's framing is broken; the text says how.
    Invalid(&'static str),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

impl std::error::Error for BodyError {}

impl BodyError {
    /// A short description for logs and error messages.
    pub fn describe(self) -> &'static str {
        match self {
            BodyError::Closed => "the connection closed inside the body",
            BodyError::TimedOut => "the body did not arrive in time",
            BodyError::TooLarge => "the body is too large",
            BodyError::Invalid(what) => what,
        }
    }
}

/// A connection being read: its I/O, the bytes read and not yet used, and the deadline
/// of the read (none when the caller bounds the whole exchange itself).
pub struct Source<'a, I> {
    pub io: &'a mut I,
    pub buf: &'a mut BytesMut,
    pub timer: Option<&'a mut Timer>,
}

impl<I: AsyncRead + Unpin> Source<'_, I> {
    /// Reads more into the buffer.
    pub async fn fill(&mut self) -> Result<(), BodyError> {
        // a peer that keeps sending never lets the read wait on the timer
        if self.timer.as_ref().is_some_and(|timer| timer.passed()) {
            return Err(BodyError::TimedOut);
        }
        match read_more(self.io, self.buf, self.timer.as_deref_mut(), None).await {
            Read::Data => Ok(()),
            Read::Closed | Read::Stopped => Err(BodyError::Closed),
            Read::TimedOut => Err(BodyError::TimedOut),
        }
    }

    /// The next `length` bytes (the caller checked them against its limit).
    pub async fn read_length(&mut self, length: usize) -> Result<Bytes, BodyError> {
        if self.buf.len() < length {
            // grow with what arrives: a declared length alone reserves at most 64 KiB
            self.buf.reserve((length - self.buf.len()).min(KEEP_BUFFER));
            while self.buf.len() < length {
                self.fill().await?;
            }
        }
        Ok(self.buf.split_to(length).freeze())
    }

    /// Where the line at the start of the buffer ends (its LF), reading more as needed;
    /// `too_long` past [`MAX_CHUNK_LINE`].
    async fn line_end(&mut self, too_long: &'static str) -> Result<usize, BodyError> {
        loop {
            if let Some(at) = self
                .buf
                .iter()
                .take(MAX_CHUNK_LINE)
                .position(|b| *b == b'\n')
            {
                return Ok(at);
            }
            if self.buf.len() >= MAX_CHUNK_LINE {
                return Err(BodyError::Invalid(too_long));
            }
            self.fill().await?;
        }
    }

    /// A chunked body (RFC 9112 §7.1) of at most `max` bytes, its trailer section read and
    /// dropped: the pieces of a [`Decoder`], gathered.
    pub async fn read_chunked(&mut self, max: usize) -> Result<Bytes, BodyError> {
        let mut decoder = Decoder::new(super::common::Framing::Chunked, max as u64);
        let mut body = BytesMut::new();
        while let Some(piece) = decoder.next(self).await? {
            body.extend_from_slice(&piece);
        }
        Ok(body.freeze())
    }

    /// Everything until the connection closes, at most `max` bytes (RFC 9112 §6.3 item 8;
    /// answers only).
    pub async fn read_to_close(&mut self, max: usize) -> Result<Bytes, BodyError> {
        loop {
            if self.buf.len() > max {
                return Err(BodyError::TooLarge);
            }
            match read_more(self.io, self.buf, self.timer.as_deref_mut(), None).await {
                Read::Data => {}
                Read::Closed | Read::Stopped => return Ok(self.buf.split().freeze()),
                Read::TimedOut => return Err(BodyError::TimedOut),
            }
        }
    }
}

/// Most bytes of one piece a [`Decoder`] hands out.
pub const PIECE: usize = 64 * 1024;

/// Reads one body piece by piece, in constant memory, whatever its size: the streaming
/// form of the readers above, with the same rules. A chunked body's extensions and its
/// trailer section are bounded and dropped; every chunk-size line and chunk ends with
/// CRLF; the whole body is at most the decoder's `max` bytes.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    /// Body bytes handed out so far.
    total: u64,
    max: u64,
    /// Chunk extension bytes seen (chunked only).
    extensions: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// This many bytes are left of a declared length.
    Length(u64),
    /// A chunk-size line is next.
    ChunkSize,
    /// This many bytes are left of the current chunk, then its CRLF.
    ChunkData(u64),
    /// The trailer section (this many bytes of it read), then the empty line.
    Trailers(usize),
    /// Everything until the connection closes.
    UntilClose,
    Done,
}

impl Decoder {
    /// A decoder of a body framed by `framing`, at most `max` bytes.
    pub fn new(framing: super::common::Framing, max: u64) -> Decoder {
        use super::common::Framing;
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(length) => State::Length(length),
            Framing::Chunked => State::ChunkSize,
            Framing::UntilClose => State::UntilClose,
        };
        Decoder {
            state,
            total: 0,
            max,
            extensions: 0,
        }
    }

    /// Whether the body has been read to its end.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// The next piece of the body (at most [`PIECE`] bytes), or `None` at its end.
    pub async fn next<I: AsyncRead + Unpin>(
        &mut self,
        source: &mut Source<'_, I>,
    ) -> Result<Option<Bytes>, BodyError> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Length(left) => {
                    if source.buf.is_empty() {
                        source.buf.reserve(PIECE);
                        source.fill().await?;
                    }
                    let take = (source.buf.len() as u64).min(left).min(PIECE as u64);
                    self.state = if take == left {
                        State::Done
                    } else {
                        State::Length(left - take)
                    };
                    return Ok(Some(self.hand_out(source, take)?));
                }
                State::ChunkSize => {
                    let line_end = source.line_end("a chunk-size line is too long").await?;
                    let line = &source.buf[..line_end];
                    let size =
                        chunk_size(line).ok_or(BodyError::Invalid("a chunk size is not valid"))?;
                    // extensions are dropped, but not read without end: 1-byte chunks with
                    // 4 KiB of extension each would make a small body a huge transfer
                    self.extensions += line
                        .iter()
                        .position(|b| *b == b';')
                        .map_or(0, |at| line_end - at);
                    if self.extensions > MAX_CHUNK_EXTENSIONS {
                        return Err(BodyError::Invalid("the chunk extensions are too long"));
                    }
                    source.buf.advance(line_end + 1);
                    if self.total.saturating_add(size) > self.max {
                        return Err(BodyError::TooLarge);
                    }
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkData(0) => {
                    // §7.1: chunk-data is followed by CRLF
                    while source.buf.len() < 2 {
                        source.fill().await?;
                    }
                    if &source.buf[..2] != b"\r\n" {
                        return Err(BodyError::Invalid("a chunk does not end with CRLF"));
                    }
                    source.buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::ChunkData(left) => {
                    if source.buf.is_empty() {
                        source.buf.reserve(PIECE);
                        source.fill().await?;
                    }
                    let take = (source.buf.len() as u64).min(left).min(PIECE as u64);
                    self.state = State::ChunkData(left - take);
                    return Ok(Some(self.hand_out(source, take)?));
                }
                State::Trailers(read) => {
                    // §7.1.2: trailer fields, then the empty line; fields are dropped, lines
                    // must end with CRLF (a bare CR or LF inside could be read as a line end
                    // by another parser)
                    let line_end = source.line_end("the trailer section is too long").await?;
                    let line = &source.buf[..line_end];
                    if line.last() != Some(&b'\r') || line[..line.len() - 1].contains(&b'\r') {
                        return Err(BodyError::Invalid("a line does not end with CRLF"));
                    }
                    let empty = line_end == 1;
                    // §7.1.2: the trailer section is field lines; anything else (a request
                    // line smuggled in, obs-fold, control characters) is refused, not skipped
                    if !empty && !field_line(&line[..line.len() - 1]) {
                        return Err(BodyError::Invalid("a trailer line is not a field"));
                    }
                    let read = read + line_end + 1;
                    if read > MAX_CHUNK_LINE {
                        return Err(BodyError::Invalid("the trailer section is too long"));
                    }
                    source.buf.advance(line_end + 1);
                    self.state = if empty {
                        State::Done
                    } else {
                        State::Trailers(read)
                    };
                }
                State::UntilClose => {
                    if !source.buf.is_empty() {
                        let take = (source.buf.len() as u64).min(PIECE as u64);
                        return Ok(Some(self.hand_out(source, take)?));
                    }
                    source.buf.reserve(PIECE);
                    match read_more(source.io, source.buf, source.timer.as_deref_mut(), None).await
                    {
                        Read::Data => {}
                        Read::Closed | Read::Stopped => self.state = State::Done,
                        Read::TimedOut => return Err(BodyError::TimedOut),
                    }
                }
            }
        }
    }

    /// The next `take` buffered bytes, counted against the limit.
    fn hand_out<I>(&mut self, source: &mut Source<'_, I>, take: u64) -> Result<Bytes, BodyError> {
        self.total += take;
        if self.total > self.max {
            return Err(BodyError::TooLarge);
        }
        Ok(source.buf.split_to(take as usize).freeze())
    }
}

/// Whether `line` (without its CRLF) is a field line (RFC 9110 §5.1, §5.5): a token, a
/// colon, then a value of visible characters, spaces, tabs and obs-text.
fn field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|b| *b == b':') else {
        return false;
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    !name.is_empty()
        && name.iter().all(tchar)
        && value
            .iter()
            .all(|b| *b == b'\t' || *b == b' ' || (0x21..=0x7e).contains(b) || *b >= 0x80)
}

/// The size of a chunk-size line without its LF (RFC 9112 §7.1): hex digits (at most 15,
/// so the size fits), optional whitespace (spaces and tabs: §7.1.1's BWS), optional
/// extensions after `;` of visible characters and tabs, then CR.
pub fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r")?;
    if line.contains(&b'\r') {
        return None;
    }
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return None;
    }
    let rest = &line[digits..];
    let blank = rest
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    let rest = &rest[blank..];
    let visible = |b: &u8| *b == b'\t' || (0x20..0x7f).contains(b);
    if !(rest.is_empty() || (rest[0] == b';' && rest.iter().all(visible))) {
        return None;
    }
    line[..digits].iter().try_fold(0u64, |n, digit| {
        let value = (*digit as char).to_digit(16)? as u64;
        Some(n * 16 + value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_hex_with_bounded_extensions() {
        assert_eq!(chunk_size(b"1a\r"), Some(26));
        assert_eq!(chunk_size(b"0\r"), Some(0));
        assert_eq!(chunk_size(b"A; name=value\r"), Some(10));
        assert_eq!(chunk_size(b"fffffffffffffff\r"), Some(0xfff_ffff_ffff_ffff));
        for bad in [
            &b"\r"[..],
            b"1a",
            b"0x1a\r",
            b"-1\r",
            b"1 2\r",
            b"1ffffffffffffffff\r",
            b"1;a\rb\r",
            b"1;\x00\r",
            b"g\r",
            b"3\x0c;a\r",
        ] {
            assert_eq!(chunk_size(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    fn chunked(bytes: &[u8], max: usize) -> (Result<Bytes, BodyError>, Vec<u8>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut io = bytes;
            let mut buf = BytesMut::new();
            let mut source = Source {
                io: &mut io,
                buf: &mut buf,
                timer: None,
            };
            let body = source.read_chunked(max).await;
            (body, buf.to_vec())
        })
    }

    #[test]
    fn chunked_bodies_stop_at_their_end_and_refuse_what_is_not_framed() {
        let (body, rest) = chunked(b"3\r\nabc\r\n1;x=y\r\nd\r\n0\r\nt: 1\r\n\r\nNEXT", 100);
        assert_eq!(body.unwrap(), &b"abcd"[..]);
        assert_eq!(rest, b"NEXT");
        assert_eq!(
            chunked(b"5\r\nabcde\r\n0\r\n\r\n", 4).0,
            Err(BodyError::TooLarge)
        );
        assert_eq!(chunked(b"3\r\nabc\r\n", 100).0, Err(BodyError::Closed));
        for bad in [
            &b"3\nabc\r\n0\r\n\r\n"[..],
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"3\r\nabc\r\n0\r\n\n",
            b"3\r\nabc\r\n0\r\nt: 1\n\r\n",
            b"3\r\nabc\r\n0\r\nt:\r1\r\n\r\n",
            b"3\r\nabc\r\n0\r\nnot a field\r\n\r\n",
            b"3\r\nabc\r\n0\r\nGET /next HTTP/1.1\r\n\r\n",
            b"3\r\nabc\r\n0\r\n folded: x\r\n\r\n",
            b"3\r\nabc\r\n0\r\nx: a\x00b\r\n\r\n",
            b"3\r\nabc\r\n0\r\n: no name\r\n\r\n",
            b"\r\n",
        ] {
            assert!(
                matches!(chunked(bad, 100).0, Err(BodyError::Invalid(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Every piece a [`Decoder`] hands out of `bytes` (read `step` bytes at a time), or the
    /// error it stopped at, and what is left in the buffer.
    fn pieces(
        bytes: &[u8],
        framing: super::super::common::Framing,
        max: u64,
        step: usize,
    ) -> (Result<Vec<Bytes>, BodyError>, Vec<u8>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut io = tokio::io::BufReader::with_capacity(step, bytes);
            let mut io = Trickle(&mut io, step);
            let mut buf = BytesMut::new();
            let mut source = Source {
                io: &mut io,
                buf: &mut buf,
                timer: None,
            };
            let mut decoder = Decoder::new(framing, max);
            let mut pieces = Vec::new();
            loop {
                match decoder.next(&mut source).await {
                    Ok(Some(piece)) => pieces.push(piece),
                    Ok(None) => break,
                    Err(err) => return (Err(err), buf.to_vec()),
                }
            }
            assert!(decoder.done());
            (Ok(pieces), buf.to_vec())
        })
    }

    /// A reader that hands out at most `.1` bytes per read.
    struct Trickle<'a, R>(&'a mut R, usize);

    impl<R: AsyncRead + Unpin> AsyncRead for Trickle<'_, R> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let step = self.1.min(buf.remaining());
            let mut small = tokio::io::ReadBuf::new(buf.initialize_unfilled_to(step));
            let polled = std::pin::Pin::new(&mut *self.0).poll_read(cx, &mut small);
            let filled = small.filled().len();
            buf.advance(filled);
            polled
        }
    }

    #[test]
    fn a_decoder_hands_out_bounded_pieces_and_stops_at_the_body_end() {
        use super::super::common::Framing;
        let body: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        // a length: every byte, in pieces of at most PIECE, the next message left alone
        let mut wire = body.clone();
        wire.extend_from_slice(b"NEXT");
        for step in [7, 4096, 1 << 20] {
            let (got, rest) = pieces(&wire, Framing::Length(body.len() as u64), u64::MAX, step);
            let got = got.unwrap();
            assert!(
                got.iter()
                    .all(|piece| piece.len() <= PIECE && !piece.is_empty())
            );
            assert_eq!(got.concat(), body, "step {step}");
            // what follows the body stays unread, or in the buffer
            assert!(b"NEXT".starts_with(&rest), "step {step}: {rest:?}");
        }
        // chunked: a chunk larger than a piece is handed out in pieces
        let mut wire = format!("{:x}\r\n", 100_000).into_bytes();
        wire.extend_from_slice(&body[..100_000]);
        wire.extend_from_slice(format!("\r\n{:x};ext=1\r\n", 50_000).as_bytes());
        wire.extend_from_slice(&body[100_000..]);
        wire.extend_from_slice(b"\r\n0\r\ntrailer: x\r\n\r\nNEXT");
        for step in [3, 4096, 1 << 20] {
            let (got, rest) = pieces(&wire, Framing::Chunked, u64::MAX, step);
            let got = got.unwrap();
            assert!(got.iter().all(|piece| piece.len() <= PIECE));
            assert_eq!(got.concat(), body, "step {step}");
            // what follows the body stays unread, or in the buffer
            assert!(b"NEXT".starts_with(&rest), "step {step}: {rest:?}");
        }
        // until the close
        let (got, _) = pieces(&body, Framing::UntilClose, u64::MAX, 4096);
        assert_eq!(got.unwrap().concat(), body);
        // no body at all: nothing is read
        let (got, rest) = pieces(b"NEXT", Framing::Empty, 0, 4096);
        assert!(got.unwrap().is_empty());
        assert!(rest.is_empty());
    }

    #[test]
    fn a_decoder_refuses_what_is_too_large_cut_short_or_not_framed() {
        use super::super::common::Framing;
        let body = vec![b'x'; 10_000];
        let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
        chunked.extend_from_slice(&body);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(
            pieces(&chunked, Framing::Chunked, 9_999, 4096).0,
            Err(BodyError::TooLarge)
        );
        assert_eq!(
            pieces(&body, Framing::UntilClose, 9_999, 4096).0,
            Err(BodyError::TooLarge)
        );
        assert_eq!(
            pieces(&body, Framing::Length(20_000), u64::MAX, 4096).0,
            Err(BodyError::Closed)
        );
        assert_eq!(
            pieces(&chunked[..5_000], Framing::Chunked, u64::MAX, 4096).0,
            Err(BodyError::Closed)
        );
        let mut no_crlf = chunked.clone();
        no_crlf[6 + body.len()] = b'X';
        assert!(matches!(
            pieces(&no_crlf, Framing::Chunked, u64::MAX, 4096).0,
            Err(BodyError::Invalid(_))
        ));
    }
}
