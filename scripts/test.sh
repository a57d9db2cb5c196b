#!/usr/bin/env bash
# Run every TunnelMesh test on this machine:  sudo scripts/test.sh
#
#   1. scripts/install-test-deps.sh          (apt/pip test dependencies; fast when present)
#   2. cargo build --profile ci --workspace  (release code generation without LTO)
#   3. cargo fmt --check, scripts/check-layers.sh and its --self-test, cargo clippy --all-targets
#      -D warnings and cargo doc -D warnings (each counted as a test); scripts/fuzz-smoke.sh
#      (every fuzz target: corpus replay + a few seconds; one counted test)
#   4. cargo test --workspace --profile ci   (cargo nextest if installed); as root also the
#      root-only tests, which are #[ignore]d otherwise (--include-ignored / --run-ignored all)
#   5. the loom model of the ring (tm-ring under --cfg loom) and the tests of the standalone bench
#      crates (bench/dataplane, bench/s3); their test counts are added
#   6. every scripts/e2e/*.sh, sequentially, each under a timeout
#
# Ends with one line "N passed, N failed" (", N skipped" if any) where the counts are the
# unit/integration tests reported by cargo plus one per e2e script; exit 1 if anything failed.
#
# Options (for development):  --no-install  --no-cargo  --no-lint  --no-fuzz  [E2E_NAME...] (run only those)
# Environment: CARGO_TARGET_DIR (default ./target), TM_E2E_TIMEOUT (s per script, default 240),
#   TM_BUDGET_MIN (whole run, default 75: later e2e scripts are not started past it, and
#   counted as failed), TM_RESULTS (log dir, default $CARGO_TARGET_DIR/test-results).
set -u
set -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
START=$SECONDS

do_install=1
do_cargo=1
do_lint=1
do_fuzz=1
only=()
for arg in "$@"; do
    case $arg in
    --no-install) do_install=0 ;;
    --no-cargo) do_cargo=0 ;;
    --no-lint) do_lint=0 ;;
    --no-fuzz) do_fuzz=0 ;;
    -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
    *) only+=("${arg%.sh}") ;;
    esac
done

# sudo resets PATH: find the Rust toolchain of root or of the invoking user.
if ! command -v cargo >/dev/null 2>&1; then
    for d in "$HOME/.cargo/bin" /root/.cargo/bin ${SUDO_USER:+"/home/$SUDO_USER/.cargo/bin"} /usr/local/cargo/bin; do
        [[ -x $d/cargo ]] && { PATH=$d:$PATH; break; }
    done
fi

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
# Reference servers installed by install-test-deps.sh (s3s-fs for the remote chunk backend).
export S3S_FS_BIN=${S3S_FS_BIN:-${TM_TEST_TOOLS:-/opt/tm-test-tools}/bin/s3s-fs}
# One cargo profile for the build, the lints, the tests and the e2e binaries (Cargo.toml: [profile.ci]).
PROFILE=${TM_CARGO_PROFILE:-ci}
export TM_BIN_DIR=${TM_BIN_DIR:-$CARGO_TARGET_DIR/$PROFILE}
E2E_TIMEOUT=${TM_E2E_TIMEOUT:-240}
BUDGET=$((${TM_BUDGET_MIN:-75} * 60))
RESULTS=${TM_RESULTS:-$CARGO_TARGET_DIR/test-results}
mkdir -p "$RESULTS"
rm -f "$RESULTS"/*.log

passed=0
failed=0
skipped=0
failures=()

say() { printf '==> %s\n' "$*"; }
elapsed() { printf '%dm%02ds' $(((SECONDS - START) / 60)) $(((SECONDS - START) % 60)); }

finish() {
    echo
    say "finished in $(elapsed)"
    if ((${#failures[@]})); then
        say "failed:"
        printf '      %s\n' "${failures[@]}"
    fi
    if ((skipped)); then
        echo "$passed passed, $failed failed, $skipped skipped"
    else
        echo "$passed passed, $failed failed"
    fi
    ((failed == 0)) || exit 1
    exit 0
}
trap 'echo; say "interrupted"; failed=$((failed + 1)); failures+=("interrupted"); finish' INT TERM

# lint_step NAME TITLE CMD... : one counted test; log in $RESULTS/NAME.log, its tail on failure.
lint_step() {
    local name=$1 title=$2
    shift 2
    say "$title"
    if "$@" </dev/null >"$RESULTS/$name.log" 2>&1; then
        passed=$((passed + 1))
    else
        show_tail "$RESULTS/$name.log" 40
        failed=$((failed + 1))
        failures+=("$title (see $RESULTS/$name.log)")
    fi
}

# show_tail FILE N : the end of a log, indented.
show_tail() {
    echo "---- last $2 lines of $1 ----"
    tail -n "$2" "$1" | sed 's/^/    /'
    echo "---- end of $1 ----"
}

# ---------------------------------------------------------------------------------------------
if ((do_install)); then
    say "install test dependencies"
    if [[ $(id -u) -ne 0 ]]; then
        say "not root: the e2e tests need root (sudo scripts/test.sh)"
        failed=$((failed + 1))
        failures+=("not running as root")
        finish
    fi
    if ! timeout 1200 "$REPO/scripts/install-test-deps.sh" </dev/null >"$RESULTS/install.log" 2>&1; then
        show_tail "$RESULTS/install.log" 40
        failed=$((failed + 1))
        failures+=("install-test-deps.sh (see $RESULTS/install.log)")
        finish
    fi
    sed 's/^/    /' "$RESULTS/install.log"
    hash -r
fi

# ---------------------------------------------------------------------------------------------
if ((do_cargo)); then
    command -v cargo >/dev/null || { failed=$((failed + 1)); failures+=("cargo not found"); finish; }
    say "cargo build --profile $PROFILE --workspace ($(cargo --version))"
    if ! timeout 2400 cargo build --profile "$PROFILE" --workspace </dev/null >"$RESULTS/build.log" 2>&1; then
        show_tail "$RESULTS/build.log" 60
        failed=$((failed + 1))
        failures+=("cargo build --profile $PROFILE --workspace (see $RESULTS/build.log)")
        finish # nothing else can run without the binaries
    fi
    say "build ok ($(elapsed))"

    if ((do_lint)); then
        for comp in rustfmt clippy; do
            cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1 ||
                rustup component add "$comp" >/dev/null 2>&1 || true
        done
        lint_step fmt "cargo fmt --all --check" cargo fmt --all --check
        lint_step layers "scripts/check-layers.sh (layers import one way)" "$REPO/scripts/check-layers.sh"
        lint_step layers-selftest "scripts/check-layers.sh --self-test (it fails on wrong imports)" \
            "$REPO/scripts/check-layers.sh" --self-test
        lint_step clippy "cargo clippy --workspace --all-targets -- -D warnings" \
            timeout 1800 cargo clippy --workspace --all-targets --profile "$PROFILE" -- -D warnings
        lint_step doc "cargo doc --workspace --no-deps (RUSTDOCFLAGS=-D warnings)" \
            env RUSTDOCFLAGS="-D warnings" timeout 1200 cargo doc --workspace --no-deps --profile "$PROFILE"
        say "lint done ($(elapsed))"
    fi
    if ((do_fuzz)); then
        lint_step fuzz "fuzz smoke (scripts/fuzz-smoke.sh: build, corpus replay, ${TM_FUZZ_SECS:-10} s per target)" \
            env TM_RESULTS="$RESULTS" timeout 1200 "$REPO/scripts/fuzz-smoke.sh"
        say "fuzz smoke done ($(elapsed))"
    fi

    # Root-only tests are #[ignore = "needs root..."]: run them when we are root. Tests named
    # `*_child` are the child-process halves of other tests (crash and power-cut writers): they
    # run only when their parent starts them, never on their own.
    nextest_ignored=() libtest_ignored=()
    if [[ $(id -u) -eq 0 ]]; then
        nextest_ignored=(--run-ignored all -E 'not test(/_child$/)')
        libtest_ignored=(--include-ignored --skip _child)
    fi
    if cargo nextest --version >/dev/null 2>&1; then
        say "cargo nextest run --workspace --cargo-profile $PROFILE ${nextest_ignored[*]}"
        timeout 2400 cargo nextest run --workspace --cargo-profile "$PROFILE" --no-fail-fast "${nextest_ignored[@]}" </dev/null 2>&1 |
            tee "$RESULTS/cargo-test.log"
        rc=${PIPESTATUS[0]}
        # "Summary [ 1.2s] 42 tests run: 41 passed, 1 failed, 0 skipped"
        summary=$(grep -E '^ *Summary .* tests? run:' "$RESULTS/cargo-test.log" | tail -1)
        p=$(grep -oE '[0-9]+ passed' <<<"$summary" | grep -oE '[0-9]+' || true)
        f=$(grep -oE '[0-9]+ failed' <<<"$summary" | grep -oE '[0-9]+' || true)
        p=${p:-0} f=${f:-0}
        # nextest does not run doctests
        say "cargo test --doc --workspace --profile $PROFILE"
        timeout 1200 cargo test --doc --workspace --profile "$PROFILE" </dev/null 2>&1 | tee -a "$RESULTS/cargo-test.log"
        rc2=${PIPESTATUS[0]}
        ((rc == 0)) && rc=$rc2
        while read -r dp df; do p=$((p + dp)) f=$((f + df)); done < <(
            sed -n '/Doc-tests/,$s/^test result: .* \([0-9]\+\) passed; \([0-9]\+\) failed.*/\1 \2/p' "$RESULTS/cargo-test.log")
    else
        say "cargo test --workspace --profile $PROFILE -- ${libtest_ignored[*]}"
        timeout 2400 cargo test --workspace --profile "$PROFILE" --no-fail-fast -- "${libtest_ignored[@]}" </dev/null 2>&1 |
            tee "$RESULTS/cargo-test.log"
        rc=${PIPESTATUS[0]}
        p=0 f=0
        while read -r dp df; do p=$((p + dp)) f=$((f + df)); done < <(
            sed -n 's/^test result: .* \([0-9]\+\) passed; \([0-9]\+\) failed.*/\1 \2/p' "$RESULTS/cargo-test.log")
    fi
    passed=$((passed + p))
    failed=$((failed + f))
    if ((f > 0)); then
        failures+=("cargo test: $f failed (see $RESULTS/cargo-test.log)")
    fi
    if ((rc != 0 && f == 0)); then
        # e.g. a test binary that did not compile, crashed or timed out: count it once.
        failed=$((failed + 1))
        failures+=("cargo test exited $rc without a failed test count (compile error/crash/timeout)")
        grep -E '^error|panicked|SIGSEGV|SIGABRT' "$RESULTS/cargo-test.log" | head -20
    fi
    say "cargo tests: $p passed, $f failed, exit $rc ($(elapsed))"

    # extra_tests NAME TITLE CMD... : a cargo test run outside the workspace build; its
    # "test result:" counts are added (a run that fails without a count is one failure, a
    # successful one without tests one pass).
    extra_tests() {
        local name=$1 title=$2 ep=0 ef=0 erc
        shift 2
        say "$title"
        "$@" </dev/null >"$RESULTS/$name.log" 2>&1
        erc=$?
        while read -r dp df; do ep=$((ep + dp)) ef=$((ef + df)); done < <(
            sed -n 's/^test result: .* \([0-9]\+\) passed; \([0-9]\+\) failed.*/\1 \2/p' "$RESULTS/$name.log")
        passed=$((passed + ep))
        failed=$((failed + ef))
        ((ef > 0)) && failures+=("$title: $ef failed (see $RESULTS/$name.log)")
        if ((erc == 0 && ep + ef == 0)); then
            ep=1 # a crate without tests: its build is the check
            passed=$((passed + 1))
        elif ((erc != 0 && ef == 0)); then
            show_tail "$RESULTS/$name.log" 40
            ef=1 # did not build, crashed or timed out: one failure
            failed=$((failed + 1))
            failures+=("$title exited $erc (see $RESULTS/$name.log)")
        fi
        say "  $ep passed, $ef failed ($(elapsed))"
    }
    # The loom model of the ring's index protocol (its own target dir: --cfg loom changes
    # every crate's flags).
    extra_tests loom "loom model of tm-ring (--cfg loom)" \
        env RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="$CARGO_TARGET_DIR/loom" \
        timeout 1200 cargo test -p tm-ring --lib --release
    # The bench crates are standalone projects (their own profiles): build them and run their
    # tests so they keep compiling against the workspace.
    for b in dataplane s3 coord; do
        extra_tests "bench-$b" "bench/$b: cargo test" \
            env CARGO_TARGET_DIR="$CARGO_TARGET_DIR/bench" \
            timeout 1800 cargo test --manifest-path "$REPO/bench/$b/Cargo.toml"
    done
else
    say "skipping cargo (--no-cargo); binaries from $TM_BIN_DIR"
fi

# ---------------------------------------------------------------------------------------------
# sweep_netns NAME : delete namespaces left by an e2e script that was killed (its pid is dead).
sweep_netns() {
    local ns pid p
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^tm-$1-[0-9]+-" || true); do
        pid=${ns#tm-"$1"-}
        pid=${pid%%-*}
        kill -0 "$pid" 2>/dev/null && continue
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null && echo "    removed leftover namespace $ns"
        rm -rf "/etc/netns/$ns"
    done
}

scripts=()
for s in "$REPO"/scripts/e2e/*.sh; do
    name=$(basename "$s" .sh)
    if ((${#only[@]})); then
        keep=0
        for o in "${only[@]}"; do [[ $o == "$name" ]] && keep=1; done
        ((keep)) || continue
    fi
    scripts+=("$s")
done
say "e2e: ${#scripts[@]} scripts, ${E2E_TIMEOUT}s timeout each"

for s in "${scripts[@]}"; do
    name=$(basename "$s" .sh)
    logf="$RESULTS/e2e-$name.log"
    if ((SECONDS - START > BUDGET)); then
        echo "    FAIL  $name (not run: time budget of $((BUDGET / 60)) min exhausted)"
        failed=$((failed + 1))
        failures+=("e2e $name: not run, time budget exhausted")
        continue
    fi
    t0=$SECONDS
    timeout -k 15 "$E2E_TIMEOUT" bash "$s" </dev/null >"$logf" 2>&1
    rc=$?
    dt=$((SECONDS - t0))
    sweep_netns "$name"
    case $rc in
    0)
        echo "    PASS  $name (${dt}s)"
        passed=$((passed + 1))
        ;;
    77)
        echo "    SKIP  $name (${dt}s): $(grep -m1 'SKIP:' "$logf" | sed 's/.*SKIP: //')"
        skipped=$((skipped + 1))
        ;;
    *)
        why="exit $rc"
        ((rc == 124 || rc == 137)) && why="timed out after ${E2E_TIMEOUT}s"
        echo "    FAIL  $name ($why, ${dt}s): $( { grep -m1 'FAIL:' "$logf" || grep -m1 -E 'timed out|watchdog|terminated' "$logf"; } | sed 's/^\[[^]]*\] //')"
        show_tail "$logf" "${TM_FAIL_TAIL:-80}"
        failed=$((failed + 1))
        failures+=("e2e $name ($why; log $logf)")
        ;;
    esac
done

finish
