//! `cfg(tm_no_fuse)` when this build cannot mount FUSE (not root, or no /dev/fuse): the
//! power-loss tests are then ignored with that reason instead of failing.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(tm_no_fuse)");
    println!("cargo::rerun-if-changed=build.rs");
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    if !root || std::fs::metadata("/dev/fuse").is_err() {
        println!("cargo::rustc-cfg=tm_no_fuse");
    }
}
