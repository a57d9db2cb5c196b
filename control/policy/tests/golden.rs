//! Runs `tests/golden.txt` through `decide`. The S3, NFS, admin-API, Docker and packet-filter
//! enforcers must run the same table (see `tm_policy::golden`) and agree line for line.

use std::collections::BTreeMap;
use tm_policy::golden::parse_golden;
use tm_policy::{decide, load, Artifact};

#[test]
fn golden_table() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden.txt")).unwrap();
    let table = parse_golden(&text).unwrap_or_else(|e| panic!("golden.txt {e}"));
    assert!(table.cases.len() >= 60, "{}", table.cases.len());
    let mut arts: BTreeMap<Option<String>, Artifact> = BTreeMap::new();
    let mut bad = Vec::new();
    for c in &table.cases {
        let art = arts
            .entry(c.policy.clone())
            .or_insert_with(|| match &c.policy {
                None => Artifact::no_policy(&table.inventory).unwrap(),
                Some(p) => {
                    let src =
                        std::fs::read(format!("{root}/{p}")).unwrap_or_else(|e| panic!("{p}: {e}"));
                    let name = p.rsplit('/').next().unwrap();
                    load(name, &src, &table.inventory)
                        .unwrap_or_else(|e| panic!("{e}"))
                        .artifact
                }
            });
        let d = decide(art, &c.who, &c.req.as_request());
        let line_ok = match c.rule_line {
            None => true,
            Some(want) => d.rule.as_ref().map(|r| r.line) == want,
        };
        if d.allow != c.allow || !line_ok {
            bad.push(format!(
                "golden.txt:{}: {:?} {:?}: got {d}",
                c.line, c.who, c.req
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} cases differ:\n{}",
        bad.len(),
        table.cases.len(),
        bad.join("\n")
    );
}

#[test]
fn golden_parser_refuses_bad_lines() {
    assert!(parse_golden("policy none\nnode:a s3 read b/k maybe")
        .unwrap_err()
        .starts_with("line 2:"));
    assert!(parse_golden("node:a admin allow")
        .unwrap_err()
        .contains("before any `policy`"));
    assert!(parse_golden("policy none\nsomeone admin allow")
        .unwrap_err()
        .contains("unknown principal"));
    assert!(parse_golden("policy none\nroot ftp get x allow")
        .unwrap_err()
        .contains("cannot read request"));
}
