//! S3 credentials (access key -> secret and principal), with an in-memory cache.

use std::sync::MutexGuard;

use super::meta::*;
use super::{lock, CredCache, Store};
use crate::db::ReadTable as _;
use crate::StorageError;

impl Store {
    /// Store (or replace) an S3 access key.
    pub fn put_credential(
        &self,
        access_key: &str,
        secret: &str,
        principal: &str,
    ) -> Result<(), StorageError> {
        let ak = access_key.to_string();
        let rec = CredRec {
            secret: secret.to_string(),
            principal: principal.to_string(),
        };
        let cached = (rec.secret.clone(), rec.principal.clone());
        self.txn(move |wtx, _| put_json(&mut wtx.open_table(CREDS)?, &ak, &rec))?;
        let mut c = self.creds_cache();
        c.0 += 1; // a lookup that read the table before this commit must not cache its result
        c.1.insert(access_key.to_string(), cached);
        Ok(())
    }

    /// Look up an access key: `(secret, principal)`. Served from memory after the first lookup.
    pub fn credential(&self, access_key: &str) -> Result<Option<(String, String)>, StorageError> {
        let generation = {
            let c = self.creds_cache();
            if let Some(hit) = c.1.get(access_key) {
                return Ok(Some(hit.clone()));
            }
            c.0
        };
        let rtx = self.view()?;
        let found = get_json::<CredRec, _>(&rtx.open_table(CREDS)?, access_key)?
            .map(|c| (c.secret, c.principal));
        if let Some(f) = &found {
            let mut c = self.creds_cache();
            if c.0 == generation {
                c.1.insert(access_key.to_string(), f.clone());
            }
        }
        Ok(found)
    }

    /// Every credential as `(access_key, principal)`, sorted by access key.
    pub fn list_credentials(&self) -> Result<Vec<(String, String)>, StorageError> {
        let rtx = self.view()?;
        let t = rtx.open_table(CREDS)?;
        let mut out = Vec::new();
        for e in t.iter()? {
            let (k, v) = e?;
            let r: CredRec = serde_json::from_slice(v.value())?;
            out.push((k.value().to_string(), r.principal));
        }
        Ok(out)
    }

    /// Revoke an access key; returns whether it existed. Later lookups fail at once (the
    /// in-memory cache entry goes with it).
    pub fn delete_credential(&self, access_key: &str) -> Result<bool, StorageError> {
        let ak = access_key.to_string();
        let existed =
            self.txn(move |wtx, _| Ok(wtx.open_table(CREDS)?.remove(ak.as_str())?.is_some()))?;
        let mut c = self.creds_cache();
        c.0 += 1;
        c.1.remove(access_key);
        Ok(existed)
    }

    /// [`Store::credential`] if it is already in memory; never blocks on I/O (async callers use
    /// it first and fall back to `credential` on the blocking pool).
    pub fn cached_credential(&self, access_key: &str) -> Option<(String, String)> {
        self.creds_cache().1.get(access_key).cloned()
    }

    /// (generation bumped by every `put_credential` / `delete_credential`, access key ->
    /// (secret, principal)).
    fn creds_cache(&self) -> MutexGuard<'_, CredCache> {
        lock(&self.inner.creds)
    }
}
