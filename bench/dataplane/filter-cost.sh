#!/usr/bin/env bash
# Cost of the packet filter (issue 16): tcp1 throughput and Gbit/s per daemon core of our node
# with the filter off, with a policy of 10 rules, with 1,000 peers and 10,000 rules, and with the
# 1,000 peers alone (no filter), side by side: ROUNDS rounds of the four variants in turn (one
# scripts/bench-dataplane.sh run per round), then one table of every round and the medians.
#
#   sudo bench/dataplane/filter-cost.sh        # env: ROUNDS (3), DURATION (10), OUT, and what
#                                              # scripts/bench-dataplane.sh takes (TM_BIN_DIR,
#                                              # NO_BUILD, NO_INSTALL, BENCH_DIR)
# Wall-clock figures: run it on an idle machine; the table shows the background load the harness
# saw before each test.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ROUNDS="${ROUNDS:-3}"
OUT="${OUT:-/tmp/tm-filter-cost/$(date +%Y%m%d-%H%M%S)}"
export DURATION="${DURATION:-10}" TESTS=tcp1
mkdir -p "$OUT"
for i in $(seq 1 "$ROUNDS"); do
    echo "== $(date +%T) round $i of $ROUNDS, load $(cut -d' ' -f1-3 /proc/loadavg)"
    OUT="$OUT/r$i" "$ROOT/scripts/bench-dataplane.sh" custom \
        tm-filter10=custom,TM_BENCH_FILTER=rules10 \
        tm-filter-big=custom,TM_BENCH_FILTER=big \
        tm-peers1k=custom,TM_BENCH_FILTER=peers1k
    # the first build (if any) is done; later rounds use the same binaries
    export NO_BUILD=1
done
python3 - "$OUT" <<'EOF' | tee "$OUT/filter-cost.md"
import glob, json, os, statistics, sys
out = sys.argv[1]
rows = {}
for f in sorted(glob.glob(os.path.join(out, "r*", "results.jsonl"))):
    for line in open(f):
        r = json.loads(line)
        if r.get("test") == "tcp1" and r.get("gbps") is not None:
            rows.setdefault(r["impl"], []).append(r)
order = ["tunnelmesh", "tm-filter10", "tm-filter-big", "tm-peers1k"]
what = {"tunnelmesh": "filter off", "tm-filter10": "10 rules", "tm-filter-big": "1,000 peers, 10,000 rules",
        "tm-peers1k": "1,000 peers, filter off"}
base = rows.get("tunnelmesh")
med = lambda rs, k: statistics.median(r[k] for r in rs)
print("| variant | tcp1 Gbit/s per round | median | Gbit/s per daemon core per round | median | vs filter off (per core) | background cores before each test |")
print("|---|---|---:|---|---:|---:|---|")
for impl in order:
    rs = rows.get(impl)
    if not rs:
        continue
    rel = "" if not base or impl == "tunnelmesh" else "%+.1f %%" % (100 * (med(rs, "gbps_per_daemon_core") / med(base, "gbps_per_daemon_core") - 1))
    print("| %s (`%s`) | %s | %.2f | %s | %.2f | %s | %s |" % (
        what[impl], impl, ", ".join("%.2f" % r["gbps"] for r in rs), med(rs, "gbps"),
        ", ".join("%.2f" % r["gbps_per_daemon_core"] for r in rs), med(rs, "gbps_per_daemon_core"),
        rel, ", ".join("%.2f" % (r.get("bg_cores_busy") or 0) for r in rs)))
EOF
echo "results: $OUT (filter-cost.md, r*/table.md)"
