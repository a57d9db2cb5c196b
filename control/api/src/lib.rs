//! Local control API types (tmctl <-> node), versioned
#![forbid(unsafe_code)]
