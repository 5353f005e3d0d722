//! The upstream client's answer reader (`h1::client::read_answer`) on arbitrary bytes
//! (first byte: `head_only` and the body limit; then the answer, the connection closing at
//! its end): never panics, never waits past the end; an answer it returns has a final
//! status (≥ 200), a body within the limit and the input; when it calls the connection
//! reusable, the answer was not framed by the close (RFC 9112 §6.3 item 8: neither a
//! length nor a final `chunked`, for a status and method that carry a body), the
//! connection was not asked to close, and the answer ends where it ends whatever follows
//! it (the same answer with another answer appended leaves exactly that answer). Each
//! input is read whole and in pieces (sizes from a hash of it): the outcome is the same.
#![no_main]

use std::time::Duration;

use bytes::BytesMut;
use gateway_edge::h1::client::{Answer, SendError, read_answer};
use gateway_edge::h1::common::{ConnectionTokens, content_length, final_coding_is_chunked};
use libfuzzer_sys::fuzz_target;

#[path = "support.rs"]
mod support;
use support::{Pieces, piece_sizes, with_runtime};

/// What a read came to, for comparing a read of the input whole with one in pieces.
///
/// Normalised: a head that cannot be parsed. A head is parsed again only once an empty line
/// has arrived after an incomplete look (`HeadScan`), so bytes that make an incomplete head
/// invalid without an empty line are "not an HTTP answer" when they arrive together with the
/// start, and "closed inside the answer's head" (or "too large") when the start came first
/// and the connection then closed. Both refuse the answer (502, not retried); only the
/// error's kind differs (reported to the lead; the property is that the answer is refused).
fn outcome(result: &Result<(Answer, bool), SendError>) -> String {
    match result {
        Err(SendError::Invalid(what)) if what.starts_with("not an HTTP answer") => {
            "an unreadable head".into()
        }
        Err(SendError::Invalid(what)) if what == "the answer's head is too large" => {
            "an unreadable head".into()
        }
        Err(SendError::CutShort(what)) if what.contains("inside the answer's head") => {
            "an unreadable head".into()
        }
        other => format!("{other:?}"),
    }
}

type Outcome = (Result<(Answer, bool), SendError>, Vec<u8>);

/// Reads one answer from `input` handed in pieces of `sizes` (whole when empty): the answer
/// and reusability, and the bytes after it (read or not).
fn read(input: &[u8], sizes: &[usize], head_only: bool, max_body: usize) -> Outcome {
    with_runtime(|runtime| {
        runtime.block_on(async {
            let mut io = Pieces {
                data: input,
                sizes,
                turn: 0,
                pending: false,
            };
            let mut buf = BytesMut::new();
            let result = tokio::time::timeout(
                Duration::from_secs(60),
                read_answer(&mut io, &mut buf, head_only, max_body),
            )
            .await
            .expect("the answer reader waited past the end of its input");
            let mut rest = buf.to_vec();
            rest.extend_from_slice(io.data);
            (result, rest)
        })
    })
}

/// The final (non-1xx) answer head at the start of `input`, as httparse reads it.
fn final_head(input: &[u8]) -> Option<(u16, u8, Vec<(String, Vec<u8>)>)> {
    let mut at = 0;
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 128];
        let mut response = httparse::Response::new(&mut fields);
        let Ok(httparse::Status::Complete(length)) = response.parse(&input[at..]) else {
            return None;
        };
        let code = response.code?;
        if code >= 200 {
            let fields = response
                .headers
                .iter()
                .map(|field| (field.name.to_ascii_lowercase(), field.value.to_vec()))
                .collect();
            return Some((code, response.version?, fields));
        }
        at += length;
    }
}

const NEXT: &[u8] = b"HTTP/1.1 204 No Content\r\nx-next: 1\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let head_only = flags & 1 != 0;
    let max_body = match flags >> 1 & 3 {
        0 => 0,
        1 => 16,
        2 => 1024,
        _ => 32 * 1024 * 1024,
    };
    let (result, rest) = read(input, &[], head_only, max_body);
    // the same outcome however the bytes arrive
    let sizes = piece_sizes(input);
    let (split, split_rest) = read(input, &sizes, head_only, max_body);
    assert_eq!(
        outcome(&result),
        outcome(&split),
        "another outcome with the answer in pieces of {sizes:?}"
    );
    if result.is_ok() {
        assert_eq!(rest, split_rest);
    }
    let Ok((answer, reusable)) = result else {
        return;
    };
    assert!(
        answer.status.as_u16() >= 200,
        "an interim answer returned as final"
    );
    assert!(answer.body.len() <= max_body, "a body over the limit");
    assert!(answer.body.len() <= input.len());
    assert!(rest.len() <= input.len());
    if head_only {
        assert!(answer.body.is_empty(), "a body for HEAD");
    }
    if !reusable {
        return;
    }

    // reusable: framed by the answer itself, and the connection not asked to close
    let (code, version, fields) = final_head(input).expect("a final head");
    assert_eq!(code, answer.status.as_u16());
    let values = |name: &'static str| {
        fields
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    };
    let mut tokens = ConnectionTokens::default();
    values("connection").for_each(|value| tokens.read(value));
    assert!(
        tokens.persistent(version == 0),
        "reusable though the answer asks to close"
    );
    let bodiless = head_only || code == 204 || code == 304;
    if !bodiless {
        let chunked = values("transfer-encoding")
            .last()
            .is_some_and(|v| final_coding_is_chunked(v));
        let length = values("content-length")
            .next()
            .and_then(|v| content_length(v));
        assert!(
            chunked || length.is_some(),
            "reusable though framed by the close: {:?}",
            String::from_utf8_lossy(input)
        );
    }
    // where the answer ends does not depend on what follows it
    let mut more = input.to_vec();
    more.extend_from_slice(NEXT);
    let (again, again_rest) = read(&more, &sizes, head_only, max_body);
    let (again, again_reusable) = again.expect("the same answer, followed by another");
    assert_eq!(again.status, answer.status);
    assert_eq!(again.body, answer.body);
    assert!(again_reusable);
    assert_eq!(&again_rest[..rest.len()], &rest[..]);
    assert_eq!(&again_rest[rest.len()..], NEXT);
});
