//! Bad policy files: each refused with one line `file:line:col: message` naming the place.

use tm_policy::parse_policy;

/// Parses `body` (a policy without its braces, `default` included) and returns the one-line
/// error, asserting its shape and that it points at `line`.
fn refused(body: &str, line: u32, needle: &str) -> String {
    let src = format!("{{\n  \"default\": \"deny\",\n{body}\n}}\n");
    let e = parse_policy("p.hujson", src.as_bytes()).expect_err(&format!("must refuse:\n{src}"));
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert!(
        msg.starts_with(&format!("p.hujson:{line}:")),
        "expected line {line}: {msg}\n{src}"
    );
    assert!(msg.contains(needle), "expected {needle:?} in: {msg}");
    msg
}

#[test]
fn malformed_hujson_names_line_and_column() {
    let e = parse_policy("p.hujson", b"{\n  \"default\": \"deny\"\n  \"acls\": []\n}").unwrap_err();
    assert_eq!(
        e.to_string(),
        "p.hujson:3:3: expected ',' or '}', found '\"'"
    );
    let e = parse_policy("p.hujson", b"{\"default\": \"deny\", /* open").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("p.hujson:1:21: unterminated /* comment"),
        "{e}"
    );
}

#[test]
fn ten_megabyte_file_is_refused() {
    let mut big = b"{\"default\": \"deny\", \"hosts\": {".to_vec();
    big.resize(10 * 1024 * 1024, b' ');
    big.extend_from_slice(b"}}");
    let e = parse_policy("big.hujson", &big).unwrap_err().to_string();
    assert!(e.starts_with("big.hujson:1:1: the file is 10485762 bytes; a policy file may be at most 1048576 bytes"), "{e}");
}

#[test]
fn unknown_fields() {
    refused(
        "  \"ssh\": [],",
        3,
        "unknown field \"ssh\" in the policy (known: groups,",
    );
    refused("  \"grants\": [\n    {\"src\": [\"*\"], \"dst\": [\"*\"], \"ip\": [\"*\"], \"users\": []},\n  ],", 4, "unknown field \"users\" in a grants entry");
    refused("  \"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"], \"ports\": 1}],", 3, "unknown field \"ports\"");
    refused("  \"grants\": [{\"src\": [\"*\"], \"dst\": [\"*\"], \"app\": {\"tunnelmesh.io/cap/s3\": [{\"buckets\": [\"*\"], \"access\": \"rw\", \"secret\": 1}]}}],", 3, "unknown field \"secret\" in tunnelmesh.io/cap/s3");
    refused("  \"grants\": [{\"src\": [\"*\"], \"dst\": [\"*\"], \"app\": {\"tunnelmesh.io/cap/admin\": [{\"all\": true}]}}],", 3, "it takes no fields");
}

#[test]
fn missing_or_bad_default() {
    let e = parse_policy("p.hujson", b"{}").unwrap_err().to_string();
    assert!(e.starts_with("p.hujson:1:1: missing \"default\""), "{e}");
    let e = parse_policy("p.hujson", b"{\"default\": \"maybe\"}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("default must be \"allow\" or \"deny\""), "{e}");
}

#[test]
fn unknown_tags_groups_hosts_autogroups() {
    refused("  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"tag:nope\"], \"dst\": [\"*:*\"]},\n  ],", 4, "unknown tag \"tag:nope\" (declare it in tagOwners)");
    refused("  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"group:nope\"], \"dst\": [\"*:*\"]},\n  ],", 4, "unknown group \"group:nope\"");
    refused(
        "  \"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"Not_A_Host:22\"]}],",
        3,
        "is not a node name",
    );
    refused("  \"acls\": [{\"action\": \"accept\", \"src\": [\"autogroup:admin\"], \"dst\": [\"*:*\"]}],", 3, "unknown autogroup");
    refused(
        "  \"groups\": {\"group:a\": [\"group:b\"]},",
        3,
        "unknown group \"group:b\"",
    );
    refused(
        "  \"tagOwners\": {\"tag:x\": [\"group:none\"]},",
        3,
        "unknown tag owner",
    );
    refused("  \"tagOwners\": {\"web\": []},", 3, "is not a tag");
    refused("  \"hosts\": {\"db\": \"10.0.0.1/8\"},", 3, "host bits set");
    refused(
        "  \"tests\": [{\"src\": \"tag:nope\", \"accept\": [\"a:1\"]}],",
        3,
        "unknown tag",
    );
}

#[test]
fn group_cycles() {
    let m = refused(
        "  \"groups\": {\n    \"group:a\": [\"group:b\"],\n    \"group:b\": [\"group:c\"],\n    \"group:c\": [\"group:a\", \"alpha\"],\n  },",
        4,
        "groups form a cycle: group:a -> group:b -> group:c -> group:a",
    );
    assert!(m.contains("cycle"));
    refused(
        "  \"groups\": {\"group:self\": [\"group:self\"]},",
        3,
        "cycle: group:self -> group:self",
    );
}

#[test]
fn capabilities_that_do_not_exist() {
    refused("  \"grants\": [{\"src\": [\"*\"], \"dst\": [\"*\"], \"app\": {\n    \"tunnelmesh.io/cap/ftp\": [{}]}}],", 4, "capability \"tunnelmesh.io/cap/ftp\" does not exist");
    refused("  \"grants\": [{\"src\": [\"*\"], \"dst\": [\"*\"], \"app\": {\"tunnelmesh.io/cap/nfs\": [{\"shares\": [\"*\"], \"access\": \"admin\"}]}}],", 3, "access \"admin\" does not exist here");
    refused("  \"grants\": [{\"src\": [\"*\"], \"dst\": [\"*\"], \"app\": {\"tunnelmesh.io/cap/s3\": [{\"buckets\": [\"*\"], \"access\": \"write\"}]}}],", 3, "unknown access \"write\"");
    refused("  \"grants\": [{\"src\": [\"*\"], \"dst\": [\"*\"], \"app\": {\"tunnelmesh.io/cap/s3\": [{\"buckets\": [\"*\"]}]}}],", 3, "missing \"access\"");
    refused("  \"grants\": [{\"src\": [\"*\"], \"dst\": [\"*\"], \"app\": {\"tunnelmesh.io/cap/docker\": [{\"containers\": [\"*\"], \"verbs\": [\"shell\"]}]}}],", 3, "unknown docker verb \"shell\"");
    refused("  \"grants\": [{\"src\": [\"*\"], \"dst\": [\"*\"], \"app\": {\"tunnelmesh.io/cap/s3\": [{\"buckets\": [\"_tunnelmesh\"], \"access\": \"ro\"}]}}],", 3, "system bucket");
    refused("  \"grants\": [{\"src\": [\"*\"], \"dst\": [\"*\"], \"app\": {\"tunnelmesh.io/cap/s3\": [{\"buckets\": [\"_*\"], \"access\": \"ro\"}]}}],", 3, "system bucket");
    refused("  \"grants\": [{\"src\": [\"*\"], \"dst\": [\"*\"], \"app\": {\"tunnelmesh.io/cap/s3\": [{\"buckets\": [\"a\"], \"prefix\": \"x/\", \"access\": \"admin\"}]}}],", 3, "drop the prefix");
    refused("  \"grants\": [{\"src\": [\"*\"], \"dst\": [\"alpha\"], \"app\": {\"tunnelmesh.io/cap/s3\": [{\"buckets\": [\"a\"], \"access\": \"ro\"}]}}],", 3, "dst must be [\"*\"]");
    refused("  \"grants\": [{\"src\": [\"10.0.0.0/8\"], \"dst\": [\"*\"], \"app\": {\"tunnelmesh.io/cap/admin\": [{}]}}],", 3, "need an identity");
    refused(
        "  \"grants\": [{\"src\": [\"*\"], \"dst\": [\"*\"]}],",
        3,
        "needs \"ip\" or \"app\"",
    );
}

#[test]
fn bad_ports_and_protocols() {
    refused(
        "  \"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:90-80\"]}],",
        3,
        "port range \"90-80\" is reversed",
    );
    refused(
        "  \"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:65536\"]}],",
        3,
        "not a port",
    );
    refused(
        "  \"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*\"]}],",
        3,
        "needs host:ports",
    );
    refused("  \"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"], \"proto\": \"quic\"}],", 3, "unknown protocol \"quic\"");
    refused(
        "  \"grants\": [{\"src\": [\"*\"], \"dst\": [\"*\"], \"ip\": [\"tcp:1-2-3\"]}],",
        3,
        "not a port",
    );
    refused(
        "  \"grants\": [{\"src\": [\"*\"], \"dst\": [\"*\"], \"ip\": [\"icmp:8\"]}],",
        3,
        "has no ports",
    );
    refused(
        "  \"acls\": [{\"action\": \"drop\", \"src\": [\"*\"], \"dst\": [\"*:*\"]}],",
        3,
        "action must be \"accept\"",
    );
}

#[test]
fn errors_point_at_the_offending_entry_not_the_start() {
    // The bad dst is on line 6, column 22.
    let src = "{\n  \"default\": \"deny\",\n  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:22\"]},\n    {\"action\": \"accept\", \"src\": [\"*\"],\n     \"dst\": [\"*:22\", \"tag:x:1\"]},\n  ],\n}";
    let e = parse_policy("p.hujson", src.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("p.hujson:6:22: unknown tag \"tag:x\""), "{e}");
}
