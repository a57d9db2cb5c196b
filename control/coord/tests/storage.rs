//! Buckets and file shares are replicated control state (issue 17): created, changed and
//! deleted on one coordinator, they are in every coordinator's storage records (which each
//! daemon materialises into its object store); a partition heals into the same records.

use std::time::{Duration, Instant};

use tm_coord::{BucketSpec, ShareSpec, StorageSpec};

mod common;
use common::tmpdir;
mod pair;
use pair::*;

/// Live buckets and shares, with their settings.
type Live = (Vec<(String, BucketSpec)>, Vec<(String, ShareSpec)>);

/// The live buckets and shares of `s`.
fn live(s: &StorageSpec) -> Live {
    (
        s.buckets
            .iter()
            .filter_map(|(n, d)| d.spec.clone().map(|v| (n.clone(), v)))
            .collect(),
        s.shares
            .iter()
            .filter_map(|(n, d)| d.spec.clone().map(|v| (n.clone(), v)))
            .collect(),
    )
}

/// Polls until `c`'s storage records satisfy `f` (or 10 s pass).
async fn until(c: &Coord, what: &str, f: impl Fn(&StorageSpec) -> bool) {
    let t0 = Instant::now();
    while !f(&c.coord.storage_spec()) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what}: not after 10 s: {:?}",
            c.coord.storage_spec()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn squashed() -> ShareSpec {
    ShareSpec {
        read_only: true,
        root_squash: true,
        all_squash: false,
        anonuid: 1000,
        anongid: 1001,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_and_shares_made_on_one_coordinator_are_on_the_other_and_so_are_deletes() {
    let dir = tmpdir("storage");
    let (a, b, _) = two(&dir).await;
    converged(&a, &b, "after B joined").await;
    let q = BucketSpec {
        quota_bytes: Some(1 << 20),
        ..BucketSpec::default()
    };
    a.coord
        .put_bucket("photos", Some(q.clone()), "local root")
        .expect("bucket on A");
    a.coord
        .put_bucket("docs", Some(BucketSpec::default()), "local root")
        .expect("bucket on A");
    a.coord
        .put_share("docs", Some(squashed()), "local root")
        .expect("share on A");
    until(&b, "B sees A's buckets and share", |s| {
        live(s)
            == (
                vec![
                    ("docs".into(), BucketSpec::default()),
                    ("photos".into(), q.clone()),
                ],
                vec![("docs".into(), squashed())],
            )
    })
    .await;
    converged(&a, &b, "after the creates").await;
    // A setting changed on B reaches A; A's audit log has B's change.
    let q2 = BucketSpec {
        quota_bytes: Some(5 << 20),
        ..BucketSpec::default()
    };
    b.coord
        .put_bucket("photos", Some(q2.clone()), "local root")
        .expect("quota on B");
    until(&a, "A sees B's quota", |s| {
        s.buckets["photos"].spec.as_ref() == Some(&q2)
    })
    .await;
    // (The audit entry is a record of its own, written after the change: wait for it too.)
    converged(&a, &b, "after the quota").await;
    assert_eq!(actions(&a, "photos"), ["bucket.create", "bucket.set"]);
    // Deletes are tombstones: B learns them, with when they were written.
    a.coord
        .put_share("docs", None, "local root")
        .expect("share delete on A");
    a.coord
        .put_bucket("photos", None, "local root")
        .expect("bucket delete on A");
    until(&b, "B sees the deletes", |s| {
        live(s) == (vec![("docs".into(), BucketSpec::default())], vec![])
    })
    .await;
    let spec = b.coord.storage_spec();
    let t = &spec.buckets["photos"];
    assert!(t.spec.is_none() && t.written_ms > 0, "{t:?}");
    assert!(spec.shares["docs"].spec.is_none());
    converged(&a, &b, "after the deletes").await;
    // The conflict of a delete B could not apply is audited once, on every coordinator.
    for new in [true, false] {
        let got = b
            .coord
            .audit_storage_conflict("photos", &t.stamp, "kept: 3 objects".into())
            .expect("audit");
        assert_eq!(got, new);
    }
    converged(&a, &b, "after the conflict audit").await;
    let conflicts = |c: &Coord| {
        c.coord
            .audit_log()
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "storage.conflict")
            .count()
    };
    assert_eq!((conflicts(&a), conflicts(&b)), (1, 1));
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_and_share_changes_on_both_sides_of_a_partition_converge() {
    let dir = tmpdir("storage-part");
    let (mut a, mut b, _) = two(&dir).await;
    a.coord
        .put_bucket("shared", Some(BucketSpec::default()), "local root")
        .expect("bucket");
    converged(&a, &b, "before the partition").await;
    a.partition().await;
    b.partition().await;
    // Each side creates its own bucket and share; both set the quota of `shared` (B last).
    a.coord
        .put_bucket("left", Some(BucketSpec::default()), "local root")
        .expect("left");
    a.coord
        .put_share("left", Some(ShareSpec::default()), "local root")
        .expect("left share");
    a.coord
        .put_bucket(
            "shared",
            Some(BucketSpec {
                quota_bytes: Some(1),
                ..BucketSpec::default()
            }),
            "local root",
        )
        .expect("quota on A");
    tokio::time::sleep(Duration::from_millis(5)).await;
    b.coord
        .put_bucket("right", Some(BucketSpec::default()), "local root")
        .expect("right");
    b.coord
        .put_share("right", Some(squashed()), "local root")
        .expect("right share");
    b.coord
        .put_bucket(
            "shared",
            Some(BucketSpec {
                quota_bytes: Some(2),
                ..BucketSpec::default()
            }),
            "local root",
        )
        .expect("quota on B");
    assert_ne!(live(&a.coord.storage_spec()), live(&b.coord.storage_spec()));
    a.heal().await;
    b.heal().await;
    converged(&a, &b, "after the heal").await;
    let (sa, sb) = (a.coord.storage_spec(), b.coord.storage_spec());
    assert_eq!(sa, sb);
    let (buckets, shares) = live(&sa);
    let names: Vec<&str> = buckets.iter().map(|b| b.0.as_str()).collect();
    assert_eq!(names, ["left", "right", "shared"]);
    // The later write wins, on both.
    assert_eq!(
        sa.buckets["shared"].spec.as_ref().unwrap().quota_bytes,
        Some(2)
    );
    assert_eq!(
        shares,
        vec![
            ("left".to_owned(), ShareSpec::default()),
            ("right".to_owned(), squashed())
        ]
    );
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
