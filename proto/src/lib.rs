//! Generated gRPC types and services of the gateway contracts.

/// `aggregate.gateway.v1`: the command contract served by the data plane and the Aggregate nodes.
pub mod aggregate {
    #[allow(clippy::all, clippy::pedantic, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("aggregate.gateway.v1");
    }
}

/// Encoded file descriptors of every contract here (for gRPC server reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
