//! Shared-memory SPSC ring between control plane and dataplane (memfd + eventfd)
