//! Credential revocation: a deleted access key stops working at once, cached or not, and
//! across a reopen.

use tm_storage::{Store, StoreConfig};

#[test]
fn deleted_credentials_are_gone_everywhere() {
    let d = tempfile::tempdir().expect("tempdir");
    let s = Store::open(StoreConfig::new(d.path())).expect("open");
    s.put_credential("AK1", "s1", "alpha").unwrap();
    s.put_credential("AK2", "s2", "beta").unwrap();
    assert!(s.credential("AK1").unwrap().is_some(), "now cached");
    assert_eq!(
        s.list_credentials().unwrap(),
        vec![
            ("AK1".to_string(), "alpha".to_string()),
            ("AK2".to_string(), "beta".to_string())
        ]
    );
    assert!(s.delete_credential("AK1").unwrap());
    assert!(
        !s.delete_credential("AK1").unwrap(),
        "second delete finds nothing"
    );
    assert_eq!(s.cached_credential("AK1"), None);
    assert_eq!(s.credential("AK1").unwrap(), None);
    drop(s);
    let s = Store::open(StoreConfig::new(d.path())).expect("reopen");
    assert_eq!(
        s.credential("AK1").unwrap(),
        None,
        "the revocation was committed"
    );
    assert_eq!(
        s.credential("AK2").unwrap(),
        Some(("s2".to_string(), "beta".to_string()))
    );
}
