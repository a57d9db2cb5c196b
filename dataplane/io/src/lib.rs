//! Dataplane I/O: TUN, UDP, io_uring driver
