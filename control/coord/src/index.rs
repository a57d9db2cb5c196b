//! Lookup maps over the published membership, for the hot paths: every relayed frame checks its
//! destination key, every authenticated request maps a client certificate to its node. Rebuilt
//! on each published state change (under the write sequencer) and read under an `RwLock` that
//! no durable write ever holds, so relaying never waits for the state lock or for an fsync.

use std::collections::HashMap;

use tm_noise::PublicKey;

/// Keys and certificate fingerprints of the registered nodes.
#[derive(Debug, Default)]
pub(crate) struct Index {
    by_key: HashMap<PublicKey, String>,
    /// SHA-256 (hex) of a node's current client certificate -> (name, key).
    by_cert: HashMap<String, (String, PublicKey)>,
}

impl Index {
    /// Builds the maps from `(name, key, certificate fingerprint)` of every node.
    pub(crate) fn build<'a>(
        nodes: impl Iterator<Item = (&'a str, PublicKey, Option<&'a str>)>,
    ) -> Self {
        let mut ix = Self::default();
        for (name, key, cert) in nodes {
            ix.by_key.insert(key, name.to_owned());
            if let Some(c) = cert {
                ix.by_cert.insert(c.to_owned(), (name.to_owned(), key));
            }
        }
        ix
    }

    /// Whether a node with `key` is registered.
    pub(crate) fn has_key(&self, key: &PublicKey) -> bool {
        self.by_key.contains_key(key)
    }

    /// The name of the node with `key`.
    pub(crate) fn name_of(&self, key: &PublicKey) -> Option<&str> {
        self.by_key.get(key).map(String::as_str)
    }

    /// The node (name, key) whose current certificate has the fingerprint `cert_hex`.
    pub(crate) fn by_cert(&self, cert_hex: &str) -> Option<&(String, PublicKey)> {
        self.by_cert.get(cert_hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        let (a, b) = (PublicKey([1; 32]), PublicKey([2; 32]));
        let ix = Index::build([("a", a, Some("aa")), ("b", b, None)].into_iter());
        assert!(ix.has_key(&a) && ix.has_key(&b) && !ix.has_key(&PublicKey([3; 32])));
        assert_eq!(ix.name_of(&b), Some("b"));
        assert_eq!(ix.by_cert("aa"), Some(&("a".to_owned(), a)));
        assert_eq!(ix.by_cert("bb"), None);
    }
}
