#!/usr/bin/env bash
# Builds every fuzz target (fuzz/, cargo fuzz) and runs each briefly: first every input of
# its committed corpus (fuzz/corpus/<target>), then TM_FUZZ_SECS seconds of fuzzing from it.
# Exits non-zero on the first target that crashes, panics, leaks or times out; the input is
# kept under $TM_RESULTS/fuzz/ (add it to fuzz/corpus/<target> with the fix).
#
#   scripts/fuzz-smoke.sh [TARGET...]        (default: every target in fuzz/Cargo.toml)
#
# Environment: TM_FUZZ_SECS (per target, default 10), TM_FUZZ_TARGET_DIR (default
# $CARGO_TARGET_DIR/fuzz or target/fuzz), TM_RESULTS (default $TM_FUZZ_TARGET_DIR/results).
# Needs cargo-fuzz (installed from crates.io when missing). The stable toolchain builds the
# targets with RUSTC_BOOTSTRAP=1 (sanitizer flags are nightly-only). docs/fuzzing.md says more.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
SECS=${TM_FUZZ_SECS:-10}
TD=${TM_FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/fuzz}
OUT=${TM_RESULTS:-$TD/results}/fuzz
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked --quiet
fi

targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(sed -n 's/^name = "\([a-z0-9_]*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^tm-fuzz$')
fi
((${#targets[@]})) || { echo "no fuzz targets found in fuzz/Cargo.toml"; exit 1; }

start=$SECONDS
echo "==> cargo fuzz build (${#targets[@]} targets, target dir $TD)"
mkdir -p "$TD"
cargo fuzz build --target-dir "$TD" >"$TD/build.log" 2>&1 || {
    tail -n 40 "$TD/build.log"
    exit 1
}
echo "    built in $((SECONDS - start)) s"
bin=$TD/x86_64-unknown-linux-gnu/release
mkdir -p "$OUT"
failed=0
for t in "${targets[@]}"; do
    seeds=fuzz/corpus/$t
    [[ -d $seeds ]] || { echo "FAIL $t: no seed corpus $seeds"; failed=1; continue; }
    work=$(mktemp -d)
    log=$OUT/$t.log
    t0=$SECONDS
    # Replay the corpus (-runs=0 runs every input once), then fuzz from it. New inputs go to
    # the scratch directory, never into the committed corpus.
    if "$bin/$t" -runs=0 -artifact_prefix="$OUT/$t-" "$seeds" >"$log" 2>&1 &&
        "$bin/$t" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
            -artifact_prefix="$OUT/$t-" "$work" "$seeds" >>"$log" 2>&1; then
        execs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
        echo "ok   $t: $(find "$seeds" -type f | wc -l) seeds replayed, ${execs:-?} runs in $((SECONDS - t0)) s"
    else
        echo "FAIL $t (log $log):"
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -n 8 | sed 's/^/    /'
        failed=1
    fi
    rm -rf "$work"
done
echo "==> fuzz smoke: ${#targets[@]} targets in $((SECONDS - start)) s"
exit $failed
