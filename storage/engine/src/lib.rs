//! Object store engine: chunked content-addressed storage with transactional metadata
#![forbid(unsafe_code)]
