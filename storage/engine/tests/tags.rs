//! Object and bucket tags: stored with each version's record and the bucket's, kept across a
//! reopen, unchanged by overwrites of other versions; errors for missing keys and versions.

use tm_storage::{ObjectMeta, StorageError, Store, StoreConfig, Versioning};

fn t(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn put(s: &Store, b: &str, k: &str, body: &[u8], tags: &[(&str, &str)]) -> Option<String> {
    let meta = ObjectMeta {
        tags: t(tags),
        ..Default::default()
    };
    let mut w = s.begin_put(b, k, meta).expect("begin");
    w.write_all(body).expect("write");
    w.commit().expect("commit").version_id
}

#[test]
fn tags_per_version_and_durable() {
    let d = tempfile::tempdir().expect("tmp");
    let s = Store::open(StoreConfig::new(d.path())).expect("open");
    s.create_bucket("tagged").unwrap();
    s.set_versioning("tagged", Versioning::Enabled).unwrap();
    let v1 = put(&s, "tagged", "k", b"one", &[("v", "1")]).expect("version id");
    let v2 = put(&s, "tagged", "k", b"two", &[("v", "2")]).expect("version id");
    let etag = s.head("tagged", "k").unwrap().etag;
    let i = s
        .set_object_tags("tagged", "k", Some(&v1), t(&[("v", "one")]))
        .unwrap();
    assert_eq!(i.version_id.as_deref(), Some(v1.as_str()));
    s.set_object_tags("tagged", "k", None, t(&[("cur", "yes")]))
        .unwrap();
    s.set_bucket_tags("tagged", t(&[("env", "prod")])).unwrap();
    assert!(matches!(
        s.set_object_tags("tagged", "k", Some("nope"), Vec::new()),
        Err(StorageError::NoSuchVersion)
    ));
    assert!(matches!(
        s.set_object_tags("tagged", "missing", None, Vec::new()),
        Err(StorageError::NoSuchKey)
    ));
    assert!(matches!(
        s.set_bucket_tags("no-such", Vec::new()),
        Err(StorageError::NoSuchBucket)
    ));
    drop(s);
    let s = Store::open(StoreConfig::new(d.path())).expect("reopen");
    assert_eq!(
        s.head_version("tagged", "k", &v1).unwrap().meta.tags,
        t(&[("v", "one")])
    );
    let cur = s.head("tagged", "k").unwrap();
    assert_eq!(cur.version_id.as_deref(), Some(v2.as_str()));
    assert_eq!(cur.meta.tags, t(&[("cur", "yes")]));
    assert_eq!(cur.etag, etag, "tagging leaves the object as it was");
    assert_eq!(s.bucket_tags("tagged").unwrap(), t(&[("env", "prod")]));
    // A delete marker has no tags to set.
    s.delete_object("tagged", "k").unwrap();
    let marker = s.latest_delete_marker("tagged", "k").unwrap().flatten();
    if let Some(m) = marker {
        assert!(matches!(
            s.set_object_tags("tagged", "k", Some(&m), Vec::new()),
            Err(StorageError::DeleteMarker)
        ));
    }
}
