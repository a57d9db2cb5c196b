//! The tunnelmesh node: tokio control plane
fn main() {}
