#!/usr/bin/env bash
# Check that layers import one way; exit 1 (listing every violation) if one does not.
#
#   scripts/check-layers.sh
#
# 1. Crates (from `cargo metadata`, every kind of dependency): a crate under dataplane/ must not
#    depend on a crate under control/ or storage/; a crate under storage/ must not depend on a
#    crate under control/.
#    Heavy dependencies live in one crate each: only tm-docker may depend on bollard, and
#    tm-docker uses no workspace crate but tm-policy.
# 2. Modules of the storage engine (storage/engine/src): every module directory has a rank, and
#    code may name (`crate::NAME...`, in `use` lines or inline, outside comments) only its own
#    directory and directories of a LOWER rank:
#        0  error.rs          the error type
#        1  db/               metadata database (redb, redo log, in-memory layer, checkpoints)
#        2  chunks/           chunk stores
#        3  object/           the object layer (Store)
#        4  fs/ replication/  the file-system view for NFS; replication (beside it)
#        5  lib.rs            the crate root: wires the layers, re-exports for callers
#    Inside a layer, other layers are named by their module path (`crate::object::...`); of the
#    root's re-exports only `crate::StorageError` (rank 0) may be used there.
#
#   scripts/check-layers.sh --root DIR   check the tree in DIR instead of this repository
#   scripts/check-layers.sh --self-test  check a temporary copy of this tree, clean (must pass) and
#       with one deliberately wrong import at a time (must fail, naming it): storage -> control
#       and dataplane -> storage crate dependencies, `use crate::fs::...` in db/, an inline
#       `crate::object::...` path in chunks/, bollard in a crate other than tm-docker. Counted as a test by scripts/test.sh.
# Needs cargo and python3.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$REPO/scripts/check-layers.sh"

if [[ ${1:-} == --self-test ]]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    # Tracked and new (not ignored) files of the working tree: the sources, no target dirs
    # (outside a git checkout: everything but target*/ and .git).
    if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        (cd "$REPO" && git ls-files -z --cached --others --exclude-standard |
            tar --null --ignore-failed-read -T - -cf -) 2>/dev/null | tar -C "$tmp" -xf -
    else
        (cd "$REPO" && tar --exclude='./target*' --exclude=./.git -cf - .) | tar -C "$tmp" -xf -
    fi
    fails=0
    # expect_fail NAME FILE EXPECTED-LINE EDIT-COMMAND...: apply the edit to FILE, the checker must
    # exit 1 and print EXPECTED-LINE; then FILE is restored.
    expect_fail() {
        local name=$1 file=$2 want=$3 out rc
        shift 3
        cp "$tmp/$file" "$tmp/.orig"
        "$@" "$tmp/$file"
        rc=0
        out=$("$SELF" --root "$tmp" 2>&1) || rc=$?
        mv "$tmp/.orig" "$tmp/$file"
        if ((rc == 1)) && grep -qF -- "$want" <<<"$out"; then
            echo "self-test ok: $name: fails with: $want"
        else
            echo "self-test FAILED: $name: exit $rc, expected 1 and the line: $want"
            sed 's/^/    /' <<<"$out"
            fails=$((fails + 1))
        fi
    }
    if out=$("$SELF" --root "$tmp" 2>&1); then
        echo "self-test ok: the clean copy passes"
    else
        echo "self-test FAILED: the clean copy does not pass:"
        sed 's/^/    /' <<<"$out"
        fails=$((fails + 1))
    fi
    expect_fail "crate storage -> control" storage/engine/Cargo.toml \
        "crate tm-storage (storage/) depends on tm-s3 (control/) [normal]: storage/ must not depend on control/" \
        sed -i '/^\[dependencies\]/a tm-s3 = { path = "../../control/s3" }'
    expect_fail "crate dataplane -> storage (dev)" dataplane/core/Cargo.toml \
        "crate tm-dp (dataplane/) depends on tm-storage (storage/) [dev]: dataplane/ must not depend on storage/" \
        sh -c 'printf "\n[dev-dependencies.tm-storage]\npath = \"../../storage/engine\"\n" >>"$1"' sh
    expect_fail "module db -> fs (use line)" storage/engine/src/db/mod.rs \
        "db (rank 1) uses crate::fs (rank 4): a layer may use only lower ranks" \
        sed -i '0,/^use /s//use crate::fs::FsError;\nuse /'
    expect_fail "module chunks -> object (inline path)" storage/engine/src/chunks/mod.rs \
        "chunks (rank 2) uses crate::object (rank 3): a layer may use only lower ranks" \
        sh -c 'printf "\nfn _wrong() -> Option<crate::object::Store> { None }\n" >>"$1"' sh
    expect_fail "bollard outside tm-docker" control/tmctl/Cargo.toml \
        "crate tmctl depends on bollard: only tm-docker may (use tm-docker)" \
        sed -i '/^\[dependencies\]/a bollard = "0.19"'
    if ((fails)); then
        echo "check-layers self-test: $fails FAILED"
        exit 1
    fi
    echo "check-layers self-test: ok"
    exit 0
fi
if [[ ${1:-} == --root ]]; then
    REPO=$(cd "${2:?--root needs a directory}" && pwd)
fi
cd "$REPO"

meta=$(cargo metadata --format-version 1 --no-deps --offline --manifest-path "$REPO/Cargo.toml" 2>/dev/null ||
    cargo metadata --format-version 1 --no-deps --manifest-path "$REPO/Cargo.toml")

REPO="$REPO" python3 - "$meta" <<'EOF'
import json, os, re, sys

repo = os.environ["REPO"]
bad = []

# ---- 1. crate dependencies
meta = json.loads(sys.argv[1])
def area(path):
    rel = os.path.relpath(path, repo)
    return rel.split(os.sep)[0]
forbidden = {"dataplane": {"control", "storage"}, "storage": {"control"}}
for p in meta["packages"]:
    src = area(os.path.dirname(p["manifest_path"]))
    for d in p["dependencies"]:
        if "path" not in d:
            continue
        dst = area(d["path"])
        if dst in forbidden.get(src, ()):
            kind = d.get("kind") or "normal"
            bad.append(f"crate {p['name']} ({src}/) depends on {d['name']} ({dst}/) [{kind}]: "
                       f"{src}/ must not depend on {dst}/")
# Heavy dependencies stay in their own crate; those crates are leaves over the policy.
own_crate = {"bollard": "tm-docker"}
leaf_deps = {"tm-docker": {"tm-policy"}}
for p in meta["packages"]:
    for d in p["dependencies"]:
        home = own_crate.get(d["name"])
        if home and p["name"] != home:
            bad.append(f"crate {p['name']} depends on {d['name']}: only {home} may (use {home})")
        if p["name"] in leaf_deps and "path" in d and d["name"] not in leaf_deps[p["name"]]:
            bad.append(f"crate {p['name']} depends on {d['name']}: it may use only "
                       f"{', '.join(sorted(leaf_deps[p['name']]))} of this workspace")

# ---- 2. engine modules
root = os.path.join(repo, "storage/engine/src")
rank = {"error": 0, "db": 1, "chunks": 2, "object": 3, "fs": 4, "replication": 4}
ROOT_RANK = 5
allowed_root_items = {"StorageError": 0}

def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)

def names(text):
    """(line, first path segment) of every `crate::...` path, groups expanded."""
    out = []
    for m in re.finditer(r"\bcrate::(\{|[A-Za-z_][A-Za-z0-9_]*)", text):
        line = text.count("\n", 0, m.start()) + 1
        if m.group(1) != "{":
            out.append((line, m.group(1)))
            continue
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        inner, seg, depth = text[m.end():i - 1], "", 0
        for ch in inner + ",":
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                first = seg.strip().split("::")[0].strip()
                if first:
                    out.append((line, first))
                seg = ""
            else:
                seg += ch
    return out

for dirpath, _, files in os.walk(root):
    for f in sorted(files):
        if not f.endswith(".rs"):
            continue
        path = os.path.join(dirpath, f)
        rel = os.path.relpath(path, root)
        top = rel.split(os.sep)[0]
        if top == "lib.rs":
            continue  # the root may use every layer
        mod = top[:-3] if top.endswith(".rs") else top
        if mod not in rank:
            bad.append(f"storage/engine/src/{rel}: module '{mod}' has no rank in scripts/check-layers.sh")
            continue
        mine = rank[mod]
        text = strip_comments(open(path, encoding="utf-8").read())
        for line, name in names(text):
            if name == mod or name == "self":
                continue
            if name in rank:
                theirs, what = rank[name], f"crate::{name} (rank {rank[name]})"
            elif name in allowed_root_items:
                theirs, what = allowed_root_items[name], f"crate::{name} (rank {allowed_root_items[name]})"
            elif name[:1].islower():
                theirs, what = ROOT_RANK, f"crate::{name} (not a layer directory, rank {ROOT_RANK})"
            else:
                theirs, what = ROOT_RANK, f"crate::{name} (a crate-root re-export, rank {ROOT_RANK}; name its layer's module path instead)"
            if theirs >= mine:
                bad.append(f"storage/engine/src/{rel}:{line}: {mod} (rank {mine}) uses {what}: "
                           f"a layer may use only lower ranks")

if bad:
    print("check-layers: FAILED")
    for b in bad:
        print("  " + b)
    sys.exit(1)
print("check-layers: ok (crate dependencies and storage engine module ranks)")
EOF
