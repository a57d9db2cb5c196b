//! Helpers shared by the integration tests of tm-coord.

use std::path::PathBuf;

use rand_core::{OsRng, RngCore};
use tm_noise::PrivateKey;

/// A fresh directory under the system temp dir (`tm-coord-TAG-PID-RANDOM`).
pub fn tmpdir(tag: &str) -> PathBuf {
    let mut r = [0u8; 8];
    OsRng.fill_bytes(&mut r);
    let d = std::env::temp_dir().join(format!(
        "tm-coord-{tag}-{}-{}",
        std::process::id(),
        u64::from_le_bytes(r)
    ));
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// A new static key.
pub fn key() -> PrivateKey {
    PrivateKey::generate(&mut OsRng)
}
