//! Sans-IO dataplane core: sessions, replay window, allowed-IPs routing, peer table, timers
#![forbid(unsafe_code)]
