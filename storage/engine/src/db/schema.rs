//! The tables a database holds, registered by the layers above (the database knows none of
//! them by name).
//!
//! Each layer hands [`Schema::table`] its typed `TableDefinition`s (and, with
//! [`Schema::on_create`], what to write once when the database is opened). The schema keeps,
//! per table name, a function that opens the table with its key and value types; the redo log
//! and the checkpoints write any registered table through it ([`Schema::apply`],
//! [`Schema::replay`]). A log record naming a table nobody registered is corruption.

use std::collections::BTreeMap;

use redb::{Key, TableDefinition, Value, WriteTransaction};

use super::mem::Local;
use crate::StorageError;

/// Writes to one table, in order: key bytes, value bytes (`None` = removal).
pub(crate) type Writes<'a, 'b> = dyn Iterator<Item = (&'b [u8], Option<&'b [u8]>)> + 'a;

type ApplyFn = fn(&WriteTransaction, &str, &mut Writes<'_, '_>) -> Result<(), StorageError>;
type CreateFn = fn(&WriteTransaction, &str) -> Result<(), StorageError>;
/// Written once in the transaction that opens the database (e.g. a system bucket).
pub(crate) type InitFn = fn(&WriteTransaction) -> Result<(), StorageError>;

#[derive(Clone, Copy)]
struct TableFns {
    apply: ApplyFn,
    create: CreateFn,
}

/// Registered tables and open-time initialisers.
#[derive(Clone, Default)]
pub(crate) struct Schema {
    tables: BTreeMap<String, TableFns>,
    inits: Vec<InitFn>,
}

impl Schema {
    /// Register a table (its name must be unique; registering it again is a no-op).
    pub(crate) fn table<K: Key + 'static, V: Value + 'static>(
        &mut self,
        def: TableDefinition<'_, K, V>,
    ) -> &mut Schema {
        use redb::TableHandle as _;
        self.tables.insert(
            def.name().to_string(),
            TableFns {
                apply: apply_typed::<K, V>,
                create: create_typed::<K, V>,
            },
        );
        self
    }

    /// Run `f` in the transaction that opens the database (after every table exists).
    pub(crate) fn on_create(&mut self, f: InitFn) -> &mut Schema {
        self.inits.push(f);
        self
    }

    /// Add another layer's tables and initialisers.
    pub(crate) fn extend(&mut self, other: &Schema) -> &mut Schema {
        self.tables
            .extend(other.tables.iter().map(|(k, v)| (k.clone(), *v)));
        self.inits.extend(other.inits.iter().copied());
        self
    }

    /// Create every table (if missing), then run the initialisers.
    pub(crate) fn create(&self, wtx: &WriteTransaction) -> Result<(), StorageError> {
        for (name, f) in &self.tables {
            (f.create)(wtx, name)?;
        }
        for f in &self.inits {
            f(wtx)?;
        }
        Ok(())
    }

    /// Apply writes (table name → key → value, `None` = removal) in `wtx`, one table open per
    /// table.
    pub(crate) fn apply(&self, wtx: &WriteTransaction, writes: &Local) -> Result<(), StorageError> {
        for (name, w) in writes {
            let mut it = w.iter().map(|(k, v)| (k.bytes(), v.as_deref()));
            self.apply_table(wtx, name, &mut it)?;
        }
        Ok(())
    }

    /// Re-apply the redo records of a log (replay at open), in order.
    pub(crate) fn replay(
        &self,
        wtx: &WriteTransaction,
        payloads: &[Vec<u8>],
    ) -> Result<(), StorageError> {
        for p in payloads {
            let ops = super::mem::decode(p)?;
            debug_assert!(!ops.is_empty(), "empty records are never written");
            for (name, k, v) in &ops {
                let mut it = std::iter::once((k.as_slice(), v.as_deref()));
                self.apply_table(wtx, name, &mut it)?;
            }
        }
        Ok(())
    }

    fn apply_table(
        &self,
        wtx: &WriteTransaction,
        name: &str,
        it: &mut Writes<'_, '_>,
    ) -> Result<(), StorageError> {
        match self.tables.get(name) {
            Some(f) => (f.apply)(wtx, name, it),
            None => Err(StorageError::Corrupt(format!(
                "write-ahead log names an unknown table {name:?}"
            ))),
        }
    }
}

fn create_typed<K: Key + 'static, V: Value + 'static>(
    wtx: &WriteTransaction,
    name: &str,
) -> Result<(), StorageError> {
    wtx.open_table(TableDefinition::<K, V>::new(name))?;
    Ok(())
}

fn apply_typed<K: Key + 'static, V: Value + 'static>(
    wtx: &WriteTransaction,
    name: &str,
    it: &mut Writes<'_, '_>,
) -> Result<(), StorageError> {
    let mut t = wtx.open_table(TableDefinition::<K, V>::new(name))?;
    for (key, value) in it {
        match value {
            Some(v) => {
                t.insert(K::from_bytes(key), V::from_bytes(v))?;
            }
            None => {
                t.remove(K::from_bytes(key))?;
            }
        }
    }
    Ok(())
}
