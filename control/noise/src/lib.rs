//! Sans-IO WireGuard (Noise_IKpsk2) handshake and key handling
#![forbid(unsafe_code)]
