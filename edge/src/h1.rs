//! HTTP/1.1 of our own, for both sides of the gateway: the server loop of both planes'
//! listeners and the client of the data plane's upstream calls (and of the health probe).
//! Laid out like Pingora's `protocols/http/v1`: what both sides read alike
//! ([`common`]: head bounds and end, `content-length`, `transfer-encoding`,
//! `connection`, the connection timer), message bodies ([`body`]: one chunked decoder with
//! one strictness both ways), the [`server`] (and how it writes answers, `write`) and the
//! [`client`]. Each rule names the RFC 9112 section it follows.
//!
//! Why our own and not hyper's: on the request path hyper's connection machinery (task,
//! channels, dispatcher, encoder) cost about 14k instructions per proxied request on each
//! side (docs/benchmarks.md); this code does the same protocol work in the connection's
//! own task with one buffer per connection. HTTP/2 stays with hyper.

pub mod body;
pub mod client;
pub mod common;
pub mod server;
mod write;

pub use common::{MAX_HEAD, MAX_HEADERS};
pub use server::{ConnLimits, Outcome, Rewind, serve_connection};
