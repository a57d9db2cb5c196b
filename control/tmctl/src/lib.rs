//! Operator CLI for a TunnelMesh node
#![forbid(unsafe_code)]
