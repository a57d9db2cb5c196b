//! Mesh DNS (hickory-server): <name>.mesh, coordinator.mesh, aliases
#![forbid(unsafe_code)]
