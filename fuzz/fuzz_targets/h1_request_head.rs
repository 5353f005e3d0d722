//! The server's request-head parser (`h1::server::parse_head`) on arbitrary bytes: never
//! panics; a head it takes is taken out of the buffer (whole, up to its empty line) and
//! its framing is coherent with its fields (never a length and chunked at once, never
//! chunked in HTTP/1.0, a length that is the one `content-length`), an HTTP/1.1 request
//! has exactly one `host`, and `keep_alive` follows the `connection` tokens; a buffer it
//! cannot complete is left untouched; and a head that parses was not refused when only a
//! prefix of it had arrived (the server parses the first bytes it reads at once).
#![no_main]

use axum::http::{Version, header};
use bytes::BytesMut;
use gateway_edge::h1::common::{ConnectionTokens, Framing, content_length};
use gateway_edge::h1::server::{HeadError, parse_head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let parsed = match parse_head(&mut buf) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => {
            assert_eq!(&buf[..], data, "an incomplete head must stay in the buffer");
            return;
        }
        Err(HeadError::Http2 | HeadError::Refused(_)) => {
            return;
        }
    };
    // the head was taken out, whole: what is left is the input's tail, and the head ends
    // with its empty line
    let taken = data.len() - buf.len();
    assert!(taken > 0);
    assert_eq!(
        &buf[..],
        &data[taken..],
        "the rest must be the bytes after the head"
    );
    let head = &data[..taken];
    assert!(
        head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"),
        "a head ends with an empty line: {:?}",
        String::from_utf8_lossy(head)
    );
    // an incomplete prefix is never refused: a head split across reads parses alike
    for cut in [taken - 1, taken / 2, usize::from(data[0]) % taken] {
        let mut prefix = BytesMut::from(&data[..cut]);
        assert!(
            matches!(parse_head(&mut prefix), Ok(None)),
            "a prefix ({cut} of {taken} bytes) of a valid head is not incomplete: {:?}",
            String::from_utf8_lossy(head)
        );
        assert_eq!(&prefix[..], &data[..cut]);
    }

    let request = &parsed.request;
    let headers = request.headers();
    let http10 = request.version() == Version::HTTP_10;
    assert!(http10 || request.version() == Version::HTTP_11);
    let lengths: Vec<_> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    let codings: Vec<_> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    match parsed.framing {
        Framing::Chunked => {
            assert!(!http10, "chunked framing in HTTP/1.0");
            assert!(
                lengths.is_empty(),
                "chunked framing beside a content-length"
            );
            assert_eq!(codings.len(), 1);
            assert!(
                codings[0]
                    .as_bytes()
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"chunked")
            );
        }
        Framing::Length(length) => {
            assert!(length > 0, "a zero length is no body");
            assert!(codings.is_empty(), "a length beside a transfer-encoding");
            assert_eq!(lengths.len(), 1);
            assert_eq!(content_length(lengths[0].as_bytes()), Some(length));
        }
        Framing::Empty => {
            assert!(codings.is_empty(), "no body beside a transfer-encoding");
            assert!(lengths.len() <= 1);
            if let Some(value) = lengths.first() {
                assert_eq!(content_length(value.as_bytes()), Some(0));
            }
        }
        Framing::UntilClose => panic!("a request body framed by the close"),
    }
    let hosts = headers.get_all(header::HOST).iter().count();
    if http10 {
        assert!(hosts <= 1);
    } else {
        assert_eq!(hosts, 1, "an HTTP/1.1 request needs exactly one host");
    }
    let mut tokens = ConnectionTokens::default();
    for value in headers.get_all(header::CONNECTION) {
        tokens.read(value.as_bytes());
    }
    assert_eq!(parsed.keep_alive, tokens.persistent(http10));
    // every field of the head is in the request (none dropped, none merged)
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut reparsed = httparse::Request::new(&mut fields);
    assert!(matches!(reparsed.parse(head), Ok(httparse::Status::Complete(n)) if n == taken));
    assert_eq!(reparsed.headers.len(), headers.len());
    assert_eq!(reparsed.method, Some(request.method().as_str()));
});
