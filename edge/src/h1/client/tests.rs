//! The client's answer reading against raw bytes that end in a close: every framing rule
//! of the module doc, refusals, and property tests over arbitrary answers.

use super::*;

const MAX_BODY: usize = 32 * 1024 * 1024;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Reads one answer from `bytes` followed by the connection's close: the answer, whether
/// the connection could carry another call, and what was left unread.
fn read(bytes: &[u8], head_only: bool) -> Result<(Answer, bool, Vec<u8>), SendError> {
    runtime().block_on(async {
        let mut io = bytes;
        let mut buf = BytesMut::new();
        let (answer, reusable) = read_answer(&mut io, &mut buf, head_only, MAX_BODY).await?;
        let mut rest = buf.to_vec();
        rest.extend_from_slice(io);
        Ok((answer, reusable, rest))
    })
}

#[test]
fn answers_are_framed_as_rfc_9112_says() {
    let (chunked, kept, rest) = read(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: application/json\r\n\r\n4;ext=1\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nx-trailer: y\r\n\r\nNEXT",
        false,
    )
    .unwrap();
    assert_eq!(&chunked.body[..], b"{\"a\":1}");
    assert_eq!(chunked.content_type().unwrap(), "application/json");
    // the framing fields are the client's business; the others come with the answer
    assert!(chunked.headers.get("transfer-encoding").is_none());
    assert!(kept);
    assert_eq!(rest, b"NEXT", "the bytes after the answer are not taken");

    let (created, _, _) = read(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 3\r\n\r\nnew",
        false,
    )
    .unwrap();
    assert_eq!(
        (created.status.as_u16(), &created.body[..]),
        (201, &b"new"[..])
    );

    // no body for 204, 304 and HEAD, whatever the length says; such an answer that
    // declared a length or a coding leaves the connection unusable (its body may follow)
    for (answer, head_only, reusable) in [
        (
            &b"HTTP/1.1 204 No Content\r\ncontent-length: 4\r\n\r\nnext"[..],
            false,
            false,
        ),
        (
            b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\nnext",
            false,
            true,
        ),
        (b"HTTP/1.1 304 Not Modified\r\n\r\nnext", false, true),
        (
            b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\nnext",
            false,
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nnext",
            true,
            false,
        ),
        (b"HTTP/1.1 200 OK\r\n\r\nnext", true, true),
    ] {
        let (empty, kept, rest) = read(answer, head_only).unwrap();
        assert_eq!(
            (empty.body.len(), kept, &rest[..]),
            (0, reusable, &b"next"[..]),
            "{:?}",
            String::from_utf8_lossy(answer)
        );
    }

    let (gone, kept, _) = read(
        b"HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 4\r\n\r\ngone",
        false,
    )
    .unwrap();
    assert_eq!((&gone.body[..], kept), (&b"gone"[..], false));

    let (until_close, kept, _) = read(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", false).unwrap();
    assert_eq!(
        (&until_close.body[..], kept),
        (&b"until the end"[..], false)
    );

    // identical repeated lengths are one length
    let (twice, _, _) = read(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok",
        false,
    )
    .unwrap();
    assert_eq!(&twice.body[..], b"ok");
}

#[test]
fn transfer_codings_and_http_1_0_are_read_as_rfc_9112_says() {
    // an empty element after chunked: still chunked
    let (answer, kept, _) = read(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked,\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!((&answer.body[..], kept), (&b"ok"[..], true));
    // chunked not last: the body runs to the close
    let (answer, kept, _) = read(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n2\r\nok\r\n",
        false,
    )
    .unwrap();
    assert_eq!((&answer.body[..], kept), (&b"2\r\nok\r\n"[..], false));
    // HTTP/1.0 with keep-alive but a transfer coding: the connection is not kept
    let (_, kept, _) = read(
        b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        false,
    )
    .unwrap();
    assert!(!kept);
    // HTTP/1.0 with keep-alive and a length: kept; without keep-alive: not
    let (_, kept, _) = read(
        b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok",
        false,
    )
    .unwrap();
    assert!(kept);
    let (_, kept, _) = read(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", false).unwrap();
    assert!(!kept);
}

#[test]
fn answers_that_cannot_be_framed_or_trusted_are_refused() {
    let interim = "HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_INTERIM_ANSWERS + 1)
        + "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    let huge_head = [
        &b"HTTP/1.1 200 OK\r\nx-pad: "[..],
        &vec![b'a'; 2 * MAX_HEAD],
    ]
    .concat();
    let cases: Vec<(&str, &[u8], bool)> = vec![
        ("not HTTP", b"HELLO\r\n\r\n", false),
        (
            "two content-lengths",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
            false,
        ),
        (
            "a length next to a transfer coding",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            false,
        ),
        ("an unasked protocol switch", b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false),
        ("a body cut short", b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", true),
        (
            "a chunk cut short",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\nabc",
            true,
        ),
        (
            "an invalid chunk size",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            true,
        ),
        (
            "a chunk-size line ending in a bare LF",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n",
            true,
        ),
        (
            "a trailer line ending in a bare LF",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx: y\n\r\n",
            true,
        ),
        (
            "a length past the limit",
            b"HTTP/1.1 200 OK\r\ncontent-length: 999999999999\r\n\r\n",
            true,
        ),
        ("a signed length", b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok", false),
        (
            "a chunk size without a digit",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n",
            true,
        ),
        ("endless interim answers", interim.as_bytes(), false),
        ("a status past 599", b"HTTP/1.1 600 Odd\r\ncontent-length: 0\r\n\r\n", false),
        ("a status of 999", b"HTTP/1.1 999 Odd\r\ncontent-length: 0\r\n\r\n", false),
        ("a head that never ends", &huge_head, false),
    ];
    for (case, answer, cut_short) in cases {
        let err = read(answer, false)
            .err()
            .unwrap_or_else(|| panic!("{case}: accepted"));
        match (&err, cut_short) {
            (SendError::CutShort(_), true) | (SendError::Invalid(_), false) => {}
            _ => panic!("{case}: {err:?}"),
        }
    }
    assert!(matches!(read(b"", false), Err(SendError::Closed(_))));
}

#[test]
fn requests_are_encoded_with_a_length_when_they_carry_a_body() {
    let host = HeaderValue::from_static("up:80");
    let path = PathAndQuery::from_static("/q?x=1");
    let name = HeaderName::from_static("x-tenant-id");
    let value = HeaderValue::from_static("demo");
    let mut out = Vec::new();
    let body = Bytes::from_static(b"{}");
    encode(
        &mut out,
        &host,
        &Call {
            method: &Method::POST,
            path: &path,
            headers: &[(&name, &value)],
            more: &[],
            body: &body,
            streamed: None,
            idempotent: false,
        },
    );
    assert_eq!(
        out,
        b"POST /q?x=1 HTTP/1.1\r\nhost: up:80\r\nx-tenant-id: demo\r\ncontent-length: 2\r\n\r\n{}"
    );
    let empty = Bytes::new();
    for (method, length) in [(Method::GET, false), (Method::PUT, true)] {
        encode(
            &mut out,
            &host,
            &Call {
                method: &method,
                path: &path,
                headers: &[],
                more: &[],
                body: &empty,
                streamed: None,
                idempotent: true,
            },
        );
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(text.contains("content-length: 0\r\n"), length, "{method}");
    }
    // a large body is not copied behind the head
    let large = Bytes::from(vec![b'x'; COALESCE_BODY + 1]);
    encode(
        &mut out,
        &host,
        &Call {
            method: &Method::POST,
            path: &path,
            headers: &[],
            more: &[],
            body: &large,
            streamed: None,
            idempotent: false,
        },
    );
    assert!(out.ends_with(format!("content-length: {}\r\n\r\n", COALESCE_BODY + 1).as_bytes()));
}

fn header_line() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    (
        prop_oneof![
            Just("content-length"),
            Just("Transfer-Encoding"),
            Just("connection"),
            Just("content-type"),
            Just("x-other"),
        ],
        prop_oneof![
            Just("chunked".to_string()),
            Just("gzip, chunked".to_string()),
            Just("close".to_string()),
            (0u64..64).prop_map(|n| n.to_string()),
            "[ -~]{0,12}",
        ],
    )
        .prop_map(|(name, value)| format!("{name}: {value}\r\n"))
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever an upstream sends, reading ends with an answer or a typed error: no panic,
    /// no wait past the close, never a body longer than what was sent.
    #[test]
    fn any_answer_is_read_or_refused(
        status in 100u16..600,
        headers in proptest::collection::vec(header_line(), 0..5),
        rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96),
    ) {
        let mut answer = format!("HTTP/1.1 {status} X\r\n").into_bytes();
        for line in &headers {
            answer.extend_from_slice(line.as_bytes());
        }
        answer.extend_from_slice(b"\r\n");
        answer.extend_from_slice(&rest);
        if let Ok((answer, _, _)) = read(&answer, false) {
            proptest::prop_assert!(answer.body.len() <= rest.len());
            proptest::prop_assert!(answer.status.as_u16() >= 200);
        }
    }

    /// A chunked body, cut anywhere and with chunk extensions, reads back whole.
    #[test]
    fn chunked_bodies_read_back_whole(
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        cuts in proptest::collection::vec(1usize..200, 0..8),
        extension in proptest::prelude::any::<bool>(),
    ) {
        let mut answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        let mut left = &body[..];
        for cut in cuts.iter().copied().chain(std::iter::repeat(64)) {
            if left.is_empty() {
                break;
            }
            let (chunk, rest) = left.split_at(cut.min(left.len()));
            answer.extend_from_slice(format!("{:x}", chunk.len()).as_bytes());
            if extension {
                answer.extend_from_slice(b";name=value");
            }
            answer.extend_from_slice(b"\r\n");
            answer.extend_from_slice(chunk);
            answer.extend_from_slice(b"\r\n");
            left = rest;
        }
        answer.extend_from_slice(b"0\r\n\r\n");
        let (read, _, _) = read(&answer, false)
            .map_err(|err| proptest::test_runner::TestCaseError::fail(format!("{err:?}")))?;
        proptest::prop_assert_eq!(&read.body[..], &body[..]);
    }
}
