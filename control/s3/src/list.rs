//! Delimiter grouping and paging over the engine's flat, lexicographic key listing.

use tm_storage::{ObjectInfo, StorageError};

/// How many keys to ask the engine for per round trip.
const BATCH: usize = 1000;

/// One page of a listing.
#[derive(Debug, Default)]
pub(crate) struct Page {
    /// Objects, in key order.
    pub objects: Vec<ObjectInfo>,
    /// Common prefixes (each ends with the delimiter), in order.
    pub prefixes: Vec<String>,
    /// More entries follow.
    pub truncated: bool,
    /// The last key or prefix returned (the marker for the next page) when truncated.
    pub next_marker: Option<String>,
}

/// Lists up to `max` entries (objects + common prefixes) under `prefix` after `after`.
/// `fetch(prefix, start_after, limit)` is the engine's `list_objects`.
pub(crate) fn page(
    mut fetch: impl FnMut(&str, Option<&str>, usize) -> Result<Vec<ObjectInfo>, StorageError>,
    prefix: &str,
    delimiter: Option<&str>,
    after: Option<&str>,
    max: usize,
) -> Result<Page, StorageError> {
    let delimiter = delimiter.filter(|d| !d.is_empty());
    let mut out = Page::default();
    let mut cursor: Option<String> = after.map(|a| match delimiter {
        // A marker that is a common prefix skips everything under it.
        Some(d) if a.starts_with(prefix) && a.ends_with(d) && a.len() > prefix.len() => {
            format!("{a}\u{10FFFF}")
        }
        _ => a.to_owned(),
    });
    let mut count = 0usize;
    let mut last: Option<String> = None;
    'outer: loop {
        let batch = fetch(prefix, cursor.as_deref(), BATCH)?;
        let full = batch.len() >= BATCH;
        if batch.is_empty() {
            break;
        }
        let mut jumped = false;
        for obj in batch {
            cursor = Some(obj.key.clone());
            let rest = obj.key.get(prefix.len()..).unwrap_or("");
            if let Some(d) = delimiter {
                if let Some(i) = rest.find(d) {
                    let cp = obj.key[..prefix.len() + i + d.len()].to_owned();
                    if last.as_deref() == Some(cp.as_str()) {
                        continue;
                    }
                    if count == max {
                        out.truncated = true;
                        break 'outer;
                    }
                    count += 1;
                    cursor = Some(format!("{cp}\u{10FFFF}"));
                    last = Some(cp.clone());
                    out.prefixes.push(cp);
                    jumped = true;
                    break;
                }
            }
            if count == max {
                out.truncated = true;
                break 'outer;
            }
            count += 1;
            last = Some(obj.key.clone());
            out.objects.push(obj);
        }
        if !full && !jumped {
            break;
        }
    }
    if out.truncated {
        out.next_marker = last;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;
    use tm_storage::ObjectMeta;

    fn keys(ks: &[&str]) -> Vec<ObjectInfo> {
        let mut v: Vec<ObjectInfo> = ks
            .iter()
            .map(|k| ObjectInfo {
                key: (*k).to_owned(),
                size: 1,
                etag: String::new(),
                modified: SystemTime::UNIX_EPOCH,
                meta: ObjectMeta::default(),
                version_id: None,
            })
            .collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    fn fetcher(
        all: Vec<ObjectInfo>,
    ) -> impl FnMut(&str, Option<&str>, usize) -> Result<Vec<ObjectInfo>, StorageError> {
        move |p, after, n| {
            Ok(all
                .iter()
                .filter(|o| o.key.starts_with(p) && after.is_none_or(|a| o.key.as_str() > a))
                .take(n)
                .cloned()
                .collect())
        }
    }

    #[test]
    fn delimiter_groups_and_pages() {
        let all = keys(&["a/1", "a/2", "b", "c/x/1", "c/y", "d"]);
        let p = page(fetcher(all.clone()), "", Some("/"), None, 1000).expect("list");
        let names: Vec<_> = p.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(names, ["b", "d"]);
        assert_eq!(p.prefixes, ["a/", "c/"]);
        assert!(!p.truncated);

        let p1 = page(fetcher(all.clone()), "", Some("/"), None, 2).expect("list");
        assert_eq!(p1.prefixes, ["a/"]);
        assert_eq!(p1.objects.len(), 1);
        assert!(p1.truncated);
        assert_eq!(p1.next_marker.as_deref(), Some("b"));
        let p2 = page(fetcher(all.clone()), "", Some("/"), Some("b"), 2).expect("list");
        assert_eq!(p2.prefixes, ["c/"]);
        assert_eq!(p2.objects[0].key, "d");
        assert!(!p2.truncated);

        // marker that is a prefix skips its contents
        let p3 = page(fetcher(all.clone()), "", Some("/"), Some("a/"), 10).expect("list");
        assert_eq!(p3.objects[0].key, "b");

        // prefix + delimiter
        let p4 = page(fetcher(all), "c/", Some("/"), None, 10).expect("list");
        assert_eq!(p4.prefixes, ["c/x/"]);
        assert_eq!(p4.objects[0].key, "c/y");
    }

    #[test]
    fn no_delimiter_pages_across_batches() {
        let names: Vec<String> = (0..2500).map(|i| format!("k{i:05}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let all = keys(&refs);
        let p = page(fetcher(all.clone()), "", None, None, 2000).expect("list");
        assert_eq!(p.objects.len(), 2000);
        assert!(p.truncated);
        let p2 = page(fetcher(all), "", None, p.next_marker.as_deref(), 2000).expect("list");
        assert_eq!(p2.objects.len(), 500);
        assert!(!p2.truncated);
    }
}
