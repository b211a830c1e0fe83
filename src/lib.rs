//! rotations: how far a token's hidden-state vector rotates from each GPT-2 layer to the next.
//!
//! Layers, one direction of dependency:
//! `service` (gRPC handlers) → `engine` (batching, orchestration) → `analysis` (pure science) and
//! `model` (ONNX Runtime on its own thread). `client` is the command-line client of the gRPC API.
pub mod analysis;
pub mod client;
pub mod config;
pub mod engine;
pub mod error;
pub mod model;
pub mod proto;
pub mod security;
pub mod service;
pub mod telemetry;
