//! What the framing targets share: one paused-clock runtime per thread, and a reader that
//! hands an input in pieces as a socket would (sizes from a hash of the input, so a failure
//! reproduces).

// each target includes this file and uses a part of it
#![allow(dead_code)]

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

thread_local! {
    /// One runtime for every input: a paused clock, so a read that waits past the end of
    /// its input times out at once instead of hanging.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
}

/// Runs `f` with the thread's runtime.
pub fn with_runtime<R>(f: impl FnOnce(&tokio::runtime::Runtime) -> R) -> R {
    RUNTIME.with(f)
}

/// Hands `data` in pieces whose sizes cycle through `sizes` (whole when empty), as a
/// socket would; each piece is pending once first (waking at once).
pub struct Pieces<'a> {
    pub data: &'a [u8],
    pub sizes: &'a [usize],
    pub turn: usize,
    pub pending: bool,
}

impl<'a> Pieces<'a> {
    pub fn new(data: &'a [u8], sizes: &'a [usize]) -> Pieces<'a> {
        Pieces {
            data,
            sizes,
            turn: 0,
            pending: false,
        }
    }
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.data.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let take = if self.sizes.is_empty() {
            self.data.len()
        } else {
            if !self.pending {
                self.pending = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.pending = false;
            self.turn += 1;
            self.sizes[self.turn % self.sizes.len()]
        };
        let take = take.min(self.data.len()).min(buf.remaining());
        let (piece, rest) = self.data.split_at(take);
        buf.put_slice(piece);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// Piece sizes for `input`, 1 to 64 bytes, from a hash of it (the same input is always cut
/// the same way).
pub fn piece_sizes(input: &[u8]) -> Vec<usize> {
    let mut state = input.iter().fold(0x811c_9dc5u32, |hash, b| {
        (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    });
    (0..16)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            if state & 3 == 0 {
                1
            } else {
                1 + (state >> 26) as usize
            }
        })
        .collect()
}
