//! Writing the server's answers (RFC 9112 §6, §9.6): the status line, the `date` of the
//! current second, the body framed by its declared length, by chunks (HTTP/1.1) or by the
//! close (HTTP/1.0), none for HEAD, 204 and 304, and `connection: close` when the
//! connection ends after it.

use axum::body::Body;
use axum::http::{HeaderName, StatusCode, header};
use axum::response::Response;
use http_body_util::BodyExt;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// A connection whose every write must end within `idle` (when given: a streamed answer;
/// a small one is bounded as a whole by the caller, which costs one timer, not one per
/// step).
struct Idle<'a, I> {
    io: &'a mut I,
    idle: Option<Duration>,
}

impl<I: AsyncWrite + Unpin> Idle<'_, I> {
    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        within(self.idle, self.io.write_all(bytes)).await
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        within(self.idle, self.io.flush()).await
    }
}

/// `step`, failing with `TimedOut` when it takes longer than `idle` (when given).
async fn within<T>(
    idle: Option<Duration>,
    step: impl Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match idle {
        None => step.await,
        Some(idle) => tokio::time::timeout(idle, step)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
    }
}

/// Whether an answer body is small and whole: written at once, and bounded as a whole.
pub(super) fn small(response: &Response) -> bool {
    axum::body::HttpBody::size_hint(response.body())
        .exact()
        .is_some_and(|length| length <= WRITE_CHUNK as u64)
}

/// Answers are written in pieces of about this size.
const WRITE_CHUNK: usize = 64 * 1024;

thread_local! {
    /// The `date` header of the current second, formatted once a second per thread.
    static DATE: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((0, [0; 29])) };
}

fn push_date(out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now();
    let second = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    DATE.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                cached.1.copy_from_slice(text.as_bytes());
                cached.0 = second;
            }
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&cached.1);
        out.extend_from_slice(b"\r\n");
    });
}

/// Headers the connection writes itself: the handler's are dropped.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        *name,
        header::CONNECTION | header::TRANSFER_ENCODING | header::DATE | header::UPGRADE
    ) || name.as_str() == "keep-alive"
}

/// Writes `response` (its body in full, as its pieces come). `Ok(false)`: the connection
/// cannot carry another request (the body failed or was shorter or longer than its
/// declared size). With `idle`, each write, and each wait for the body's next piece, must
/// end within it: a client that stops reading, or a body that stops coming, ends the
/// connection.
pub(super) async fn write_response<I: AsyncWrite + Unpin>(
    io: &mut I,
    out: &mut Vec<u8>,
    response: Response,
    head_only: bool,
    http10: bool,
    keep_alive: bool,
    idle: Option<Duration>,
) -> std::io::Result<bool> {
    let mut io = Idle { io, idle };
    let (parts, mut body) = response.into_parts();
    let mut status = parts.status;
    let mut keep_alive = keep_alive;
    if status.is_informational() {
        // a 1xx as the final answer would be read as interim, and the next answer on the
        // connection taken for this request's
        tracing::error!(
            status = status.as_u16(),
            "a handler answered with a 1xx status"
        );
        status = StatusCode::INTERNAL_SERVER_ERROR;
        body = Body::empty();
        keep_alive = false;
    }
    let bodiless = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let declared = axum::body::HttpBody::size_hint(&body).exact();
    // an unknown length: chunked for HTTP/1.1, to the end of the connection for HTTP/1.0
    let chunked = !bodiless && declared.is_none() && !http10 && !head_only;
    let handler_closes = parts
        .headers
        .get(header::CONNECTION)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
    let keep_alive =
        keep_alive && !handler_closes && (bodiless || declared.is_some() || chunked || head_only);

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let handler_length = parts.headers.get(header::CONTENT_LENGTH).cloned();
    for (name, value) in &parts.headers {
        if hop_by_hop(name) || *name == header::CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !bodiless {
        match (declared, head_only, handler_length) {
            // an answer to HEAD keeps the length the handler gave, if any; an emptied body
            // (axum empties HEAD answers) does not mean the GET's length is 0
            (_, true, Some(length)) => push_field(out, b"content-length", length.as_bytes()),
            (Some(0), true, None) => {}
            (Some(length), _, _) => push_field(
                out,
                b"content-length",
                itoa::Buffer::new().format(length).as_bytes(),
            ),
            (None, false, _) if chunked => push_field(out, b"transfer-encoding", b"chunked"),
            _ => {}
        }
    }
    push_date(out);
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");

    if bodiless || head_only {
        io.write_all(out).await?;
        io.flush().await?;
        return Ok(keep_alive);
    }
    let mut sent: u64 = 0;
    let mut complete = true;
    loop {
        let next = match idle {
            Some(idle) => tokio::time::timeout(idle, body.frame()).await,
            None => Ok(body.frame().await),
        };
        let frame = match next {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            // the body stopped coming: the answer cannot be completed
            Err(_) => {
                complete = false;
                break;
            }
        };
        let Ok(frame) = frame else {
            complete = false;
            break;
        };
        let Ok(mut data) = frame.into_data() else {
            continue; // trailers: not sent over HTTP/1.1
        };
        if data.is_empty() {
            continue;
        }
        // never past the declared length: the excess would be read as the next answer
        if let Some(declared) = declared
            && data.len() as u64 > declared - sent
        {
            data.truncate((declared - sent) as usize);
            complete = false;
        }
        sent += data.len() as u64;
        if chunked {
            push_chunk_size(out, data.len());
            out.extend_from_slice(&data);
            out.extend_from_slice(b"\r\n");
        } else if out.len() + data.len() <= WRITE_CHUNK {
            out.extend_from_slice(&data);
        } else {
            io.write_all(out).await?;
            out.clear();
            io.write_all(&data).await?;
        }
        if out.len() >= WRITE_CHUNK {
            io.write_all(out).await?;
            out.clear();
        }
        if !complete {
            break;
        }
    }
    if chunked && complete {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    io.write_all(out).await?;
    io.flush().await?;
    let exact = declared.is_none_or(|declared| declared == sent);
    Ok(keep_alive && complete && exact)
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A chunk-size line: the size in hex, then CRLF.
fn push_chunk_size(out: &mut Vec<u8>, size: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut n = size;
    loop {
        at -= 1;
        digits[at] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunk_sizes_are_written_in_hex() {
        for (size, text) in [(0, "0"), (10, "a"), (255, "ff"), (65536, "10000")] {
            let mut out = Vec::new();
            super::push_chunk_size(&mut out, size);
            assert_eq!(out, format!("{text}\r\n").as_bytes());
        }
    }
}
