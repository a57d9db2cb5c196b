//! Coordinator: registration with key proof, address allocation, netmap stream, join tokens, mesh CA
#![forbid(unsafe_code)]
