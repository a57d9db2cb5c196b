//! Layer 3b, replication: beside the object layer, empty for now.
//!
//! Room for replicating objects (and their metadata) across coordinators, filled by the
//! replication issue. Rule for what lands here: it may import the object layer and the layers
//! below it (`crate::object`, `crate::chunks`, `crate::db`); the object layer never imports
//! it, and the file-system view reaches it only through the object layer.
