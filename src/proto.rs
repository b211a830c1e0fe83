//! Generated gRPC types and stubs for `rotations.v1`.
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("rotations.v1");

/// The encoded descriptors of our protos, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rotations_descriptor.bin"));
