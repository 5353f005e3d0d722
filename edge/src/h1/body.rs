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
    /// dropped. Every chunk-size line and chunk ends with CRLF; the extensions of one body
    /// and its trailer section are bounded.
    pub async fn read_chunked(&mut self, max: usize) -> Result<Bytes, BodyError> {
        let mut body = BytesMut::new();
        let mut extensions = 0;
        loop {
            let line_end = self.line_end("a chunk-size line is too long").await?;
            let size = chunk_size(&self.buf[..line_end])
                .ok_or(BodyError::Invalid("a chunk size is not valid"))?;
            // extensions are dropped, but not read without end: 1-byte chunks with 4 KiB
            // of extension each would make a small body a huge transfer
            extensions += self.buf[..line_end]
                .iter()
                .position(|b| *b == b';')
                .map_or(0, |at| line_end - at);
            if extensions > MAX_CHUNK_EXTENSIONS {
                return Err(BodyError::Invalid("the chunk extensions are too long"));
            }
            self.buf.advance(line_end + 1);
            if size == 0 {
                break;
            }
            if body.len() as u64 + size > max as u64 {
                return Err(BodyError::TooLarge);
            }
            let size = size as usize;
            while self.buf.len() < size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buf[..size]);
            // §7.1: chunk-data is followed by CRLF
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(BodyError::Invalid("a chunk does not end with CRLF"));
            }
            self.buf.advance(size + 2);
        }
        // §7.1.2: trailer fields, then the empty line; fields are dropped, lines must end
        // with CRLF (a bare CR or LF inside could be read as a line end by another parser)
        let mut trailers = 0;
        loop {
            let line_end = self.line_end("the trailer section is too long").await?;
            let line = &self.buf[..line_end];
            if line.last() != Some(&b'\r') || line[..line.len() - 1].contains(&b'\r') {
                return Err(BodyError::Invalid("a line does not end with CRLF"));
            }
            let empty = line_end == 1;
            // §7.1.2: the trailer section is field lines; anything else (a request line
            // smuggled in, obs-fold, control characters) is refused, not skipped
            if !empty && !field_line(&line[..line.len() - 1]) {
                return Err(BodyError::Invalid("a trailer line is not a field"));
            }
            trailers += line_end + 1;
            if trailers > MAX_CHUNK_LINE {
                return Err(BodyError::Invalid("the trailer section is too long"));
            }
            self.buf.advance(line_end + 1);
            if empty {
                return Ok(body.freeze());
            }
        }
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
}
