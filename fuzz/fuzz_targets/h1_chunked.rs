//! The chunked decoder (`h1::body::Source::read_chunked`, both sides' one decoder) in two
//! halves, chosen by the first byte's low bit:
//! - arbitrary bytes (after two bytes of `max`): never panics, never waits past the end of
//!   the input; a body it returns is at most `max` and at most the input, ends on an empty
//!   line, and is returned again with `max` at its size and refused (413) one byte under;
//!   the result and what is left after the body are the same however the bytes arrive;
//! - structure-aware: a body cut into chunks, encoded the ways RFC 9112 §7.1 allows (upper
//!   or lower hex, leading zeros, whitespace before extensions, extensions, trailer
//!   fields), followed by unrelated bytes, decodes to the same body and leaves exactly the
//!   bytes after it, or is refused as too large when over `max`.
//!
//! Every read goes through a reader that hands the input in pieces of fuzzer-chosen sizes
//! (sometimes pending first) and through one that hands it whole.
#![no_main]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gateway_edge::h1::body::{BodyError, Source};
use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;

#[path = "support.rs"]
mod support;
use support::{Pieces, with_runtime};

/// Decodes `input` with `max`, handing it in pieces of `sizes` (whole when empty): the
/// result and every byte after the body (read or not).
fn decode(input: &[u8], sizes: &[u8], max: usize) -> (Result<Bytes, BodyError>, Vec<u8>) {
    with_runtime(|runtime| {
        runtime.block_on(async {
            // fuzzer-chosen piece sizes, 1 to 127 bytes
            let sizes: Vec<usize> = sizes.iter().map(|s| usize::from(s & 0x7f).max(1)).collect();
            let mut io = Pieces::new(input, &sizes);
            let mut buf = BytesMut::new();
            let mut source = Source {
                io: &mut io,
                buf: &mut buf,
                timer: None,
            };
            let result = tokio::time::timeout(Duration::from_secs(60), source.read_chunked(max))
                .await
                .expect("the decoder waited past the end of its input");
            let mut rest = buf.to_vec();
            rest.extend_from_slice(io.data);
            (result, rest)
        })
    })
}

fn arbitrary_bytes(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let max = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let sizes_len = usize::from(data[2] % 8);
    let Some((sizes, input)) = data[3..].split_at_checked(sizes_len) else {
        return;
    };
    let (whole, rest) = decode(input, &[], max);
    let (split, split_rest) = decode(input, sizes, max);
    assert_eq!(whole, split, "the result depends on how the bytes arrive");
    assert_eq!(
        rest, split_rest,
        "what follows the body depends on how the bytes arrive"
    );
    let Ok(body) = whole else {
        return;
    };
    assert!(
        body.len() <= max,
        "{} bytes over a limit of {max}",
        body.len()
    );
    assert!(body.len() <= input.len());
    let consumed = &input[..input.len() - rest.len()];
    assert!(
        consumed.ends_with(b"\r\n\r\n"),
        "{:?}",
        String::from_utf8_lossy(consumed)
    );
    assert_eq!(decode(input, sizes, body.len()).0.as_ref(), Ok(&body));
    if !body.is_empty() {
        assert_eq!(
            decode(input, sizes, body.len() - 1).0,
            Err(BodyError::TooLarge)
        );
    }
}

/// A token of 1 to 8 characters (chunk-extension and trailer field names).
fn token(u: &mut Unstructured<'_>, out: &mut Vec<u8>) -> ArbResult<()> {
    const TCHAR: &[u8] =
        b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    for _ in 0..u.int_in_range(1..=8)? {
        out.push(*u.choose(TCHAR)?);
    }
    Ok(())
}

/// Visible characters, spaces and tabs, up to 16 (extension and trailer values).
fn visible(u: &mut Unstructured<'_>, out: &mut Vec<u8>) -> ArbResult<()> {
    for _ in 0..u.int_in_range(0..=16)? {
        let b = u.int_in_range(0x1fu8..=0x7e)?;
        out.push(if b == 0x1f { b'\t' } else { b });
    }
    Ok(())
}

/// A chunk-size line for `size`: hex in either case, leading zeros (15 digits at most),
/// whitespace, maybe extensions; adds the extension bytes (as the decoder counts them:
/// from `;` to the line's end) to `extensions`.
fn size_line(
    u: &mut Unstructured<'_>,
    size: usize,
    out: &mut Vec<u8>,
    extensions: &mut usize,
) -> ArbResult<()> {
    let hex = if u.arbitrary()? {
        format!("{size:X}")
    } else {
        format!("{size:x}")
    };
    for _ in 0..u.int_in_range(0..=15 - hex.len())? {
        out.push(b'0');
    }
    out.extend_from_slice(hex.as_bytes());
    let with_extensions = u.ratio(1, 3)? && *extensions < 8 * 1024;
    if with_extensions {
        for _ in 0..u.int_in_range(0..=2)? {
            out.push(if u.arbitrary()? { b' ' } else { b'\t' });
        }
        let start = out.len();
        for _ in 0..u.int_in_range(1..=3)? {
            out.push(b';');
            token(u, out)?;
            match u.int_in_range(0..=2)? {
                0 => {}
                1 => {
                    out.push(b'=');
                    token(u, out)?;
                }
                _ => {
                    out.push(b'=');
                    out.push(b'"');
                    let value_start = out.len();
                    visible(u, out)?;
                    for b in &mut out[value_start..] {
                        if *b == b'"' || *b == b'\\' {
                            *b = b'x';
                        }
                    }
                    out.push(b'"');
                }
            }
        }
        // from `;` to the LF, the CR included
        *extensions += out.len() - start + 1;
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

fn structured(data: &[u8]) -> ArbResult<()> {
    let mut u = Unstructured::new(data);
    let body_len = u.int_in_range(0..=u.len().min(4096))?;
    let body = u.bytes(body_len)?.to_vec();
    let mut encoded = Vec::new();
    let mut extensions = 0;
    let mut at = 0;
    while at < body.len() {
        let size = u.int_in_range(1..=body.len() - at)?;
        size_line(&mut u, size, &mut encoded, &mut extensions)?;
        encoded.extend_from_slice(&body[at..at + size]);
        encoded.extend_from_slice(b"\r\n");
        at += size;
    }
    size_line(&mut u, 0, &mut encoded, &mut extensions)?;
    // trailer fields (dropped by the decoder), 4 KiB with the empty line at most
    if u.ratio(1, 3)? {
        for _ in 0..u.int_in_range(1..=4)? {
            token(&mut u, &mut encoded)?;
            encoded.push(b':');
            if u.arbitrary()? {
                encoded.push(b' ');
            }
            // a field value neither starts nor ends with whitespace
            let value_start = encoded.len();
            visible(&mut u, &mut encoded)?;
            let value = encoded.split_off(value_start);
            encoded.extend_from_slice(value.trim_ascii());
            encoded.extend_from_slice(b"\r\n");
        }
    }
    encoded.extend_from_slice(b"\r\n");
    let limit_under = u.ratio(1, 8)? && !body.is_empty();
    let max = if limit_under {
        u.int_in_range(0..=body.len() - 1)?
    } else {
        body.len() + usize::from(u.arbitrary::<u16>()?)
    };
    let sizes_len = u.int_in_range(0..=8)?;
    let sizes = u.bytes(sizes_len)?.to_vec();
    // whatever follows the body on the connection (the next message)
    let after = u.take_rest().to_vec();
    let mut input = encoded.clone();
    input.extend_from_slice(&after);

    for pieces in [&[][..], &sizes[..]] {
        let (result, rest) = decode(&input, pieces, max);
        if limit_under {
            assert_eq!(result, Err(BodyError::TooLarge));
            continue;
        }
        match result {
            Ok(decoded) => assert_eq!(decoded, body, "{:?}", String::from_utf8_lossy(&encoded)),
            Err(err) => panic!(
                "a valid chunked body was refused ({err:?}): {:?}",
                String::from_utf8_lossy(&encoded)
            ),
        }
        assert_eq!(
            rest, after,
            "the bytes after the body were not left as they were"
        );
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        arbitrary_bytes(rest);
    } else {
        let _ = structured(rest);
    }
});
