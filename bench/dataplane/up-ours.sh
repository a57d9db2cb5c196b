#!/usr/bin/env bash
# TUNNEL_UP_CMD for ../shared/bench impls/custom.sh: two `tunnelmesh up --config` nodes with static
# peers, one per namespace ($NS_A / $NS_B), tunnel addresses $TUN_A_IP / $TUN_B_IP over the
# $UNDERLAY_A / $UNDERLAY_B veth. Writes the PIDs of both tunnelmesh processes *and* their
# tm-dataplane children to $WORKDIR/pids (the harness accounts CPU per listed PID).
#
#   TM_BIN_DIR   directory holding tunnelmesh + tm-dataplane (default: target/release of the repo)
#   TM_DP_WORKERS  optional, exported to tm-dataplane (worker threads; default = cores)
#   TM_DP_OFFLOAD  optional, exported to tm-dataplane (0 = no TUN/UDP offloads)
#   TM_BENCH_FILTER  optional packet-filter cost variant (issue 16): `rules10` (a policy of 10
#                  rules) or `big` (998 more static peers per node, 1,000 nodes in all, and a
#                  policy of 10,000 rules); loaded with `tunnelmesh filter load` on both nodes
#                  once they run (bench/dataplane/filter-policy.py). `peers1k`: the 998 extra
#                  peers of `big` and no filter (what the peers alone cost). Unset: no filter.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${TM_BIN_DIR:=$HERE/../../target/release}"
BIN=$TM_BIN_DIR/tunnelmesh
[ -x "$BIN" ] || { echo "missing $BIN (cargo build --release -p tunnelmesh -p tm-dataplane)" >&2; exit 1; }
[ -x "$TM_BIN_DIR/tm-dataplane" ] || { echo "missing $TM_BIN_DIR/tm-dataplane" >&2; exit 1; }
export TM_DATAPLANE=$TM_BIN_DIR/tm-dataplane
[ -n "${TM_DP_WORKERS:-}" ] && export TM_DP_WORKERS
[ -n "${TM_DP_OFFLOAD:-}" ] && export TM_DP_OFFLOAD
mkdir -p "$WORKDIR/a" "$WORKDIR/b"
: > "$WORKDIR/extra-peers.yaml"
if [ -n "${TM_BENCH_FILTER:-}" ]; then
  python3 "$HERE/filter-policy.py" "$TM_BENCH_FILTER" "$WORKDIR"
fi
for s in a b; do
  (umask 077 && "$BIN" genkey > "$WORKDIR/$s/key")
  "$BIN" pubkey < "$WORKDIR/$s/key" > "$WORKDIR/$s/pub"
done
conf() { # side dev port ownip peer peerip peerunderlay peerport
  cat > "$WORKDIR/$1/config.yaml" <<YAML
name: bench-$1
data_dir: $WORKDIR/$1
private_key_file: $WORKDIR/$1/key
interface: $2
listen_port: $3
address: $4/$TUN_PREFIX
mtu: $TUN_MTU
peers:
  - name: bench-$5
    public_key: "$(cat "$WORKDIR/$5/pub")"
    endpoint: $7:$8
    allowed_ips: [$6/32]
YAML
  cat "$WORKDIR/extra-peers.yaml" >> "$WORKDIR/$1/config.yaml"
}
conf a "$TUN_A_DEV" "$PORT_A" "$TUN_A_IP" b "$TUN_B_IP" "$UNDERLAY_B" "$PORT_B"
conf b "$TUN_B_DEV" "$PORT_B" "$TUN_B_IP" a "$TUN_A_IP" "$UNDERLAY_A" "$PORT_A"
start() { # side ns dev
  ip netns exec "$2" env RUST_LOG="${TM_RUST_LOG:-warn}" "$BIN" up --config "$WORKDIR/$1/config.yaml" \
    > "$WORKDIR/tunnelmesh-$1.out" 2>&1 &
  local pid=$! dp=""
  echo "$pid" >> "$WORKDIR/pids"
  for _ in $(seq 100); do
    dp=$(pgrep -P "$pid" -x tm-dataplane || true)
    [ -n "$dp" ] && ip -n "$2" link show "$3" 2>/dev/null | grep -q ',UP' && break
    sleep 0.1
  done
  [ -n "$dp" ] || { echo "no tm-dataplane under tunnelmesh $pid ($1)" >&2; cat "$WORKDIR/tunnelmesh-$1.out" >&2; return 1; }
  echo "$dp" >> "$WORKDIR/pids"
}
start a "$NS_A" "$TUN_A_DEV"
start b "$NS_B" "$TUN_B_DEV"
if [ -n "${TM_BENCH_FILTER:-}" ] && [ "$TM_BENCH_FILTER" != peers1k ]; then
  for s in a b; do
    for _ in $(seq 100); do
      "$BIN" --socket "$WORKDIR/$s/control.sock" filter load "$WORKDIR/policy.hujson" \
        > "$WORKDIR/filter-$s.out" 2>&1 && break
      sleep 0.1
    done
    grep -q generation "$WORKDIR/filter-$s.out" || { echo "filter load ($s) failed:" >&2; cat "$WORKDIR/filter-$s.out" >&2; exit 1; }
  done
fi
