//! Integration tests: real `nats-server`, real plane binaries, real reference upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admin;
mod auth;
mod contract;
mod deploy;
mod dev;
mod ha;
mod metrics;
mod oidc;
mod otlp;
mod planes;
mod proxy;
mod rebalance;
mod routing;
mod security;
mod store;
mod tls;
mod upstream;
