#!/usr/bin/env bash
# One-command side-by-side dataplane benchmark: our node (bench/dataplane/up-ours.sh through the
# harness's impls/custom.sh) against boringtun, Debian's wireguard-go and nebula, plus a plain veth,
# in ONE run of ../shared/bench/run.sh (fresh namespaces per implementation; nothing leaves them).
#
#   sudo scripts/bench-dataplane.sh                 # default set
#   sudo scripts/bench-dataplane.sh custom          # only ours
#   REPEAT=3 DURATION=10 TESTS="tcp1 tcp4 udp" BENCH_DIR=... TM_BIN_DIR=... (see run.sh)
#   NO_BUILD=1    skip the cargo build; NO_INSTALL=1 skip installing missing peers
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${BENCH_DIR:=$ROOT/../shared/bench}"
[ -x "$BENCH_DIR/run.sh" ] || { echo "harness not found at $BENCH_DIR (set BENCH_DIR)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root (netns, TUN)" >&2; exit 1; }

if [ -z "${NO_INSTALL:-}" ]; then
  need=()
  for p in iperf3:iperf3 ping:iputils-ping ethtool:ethtool wg:wireguard-tools \
           wireguard-go:wireguard-go nebula:nebula; do
    command -v "${p%%:*}" >/dev/null || need+=("${p#*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
  fi
  if ! command -v boringtun-cli >/dev/null && [ ! -x "$HOME/.cargo/bin/boringtun-cli" ]; then
    cargo install boringtun-cli
  fi
fi

if [ -z "${TM_BIN_DIR:-}" ]; then
  : "${CARGO_TARGET_DIR:=$ROOT/target}"
  TM_BIN_DIR=$CARGO_TARGET_DIR/release
  if [ -z "${NO_BUILD:-}" ]; then
    (cd "$ROOT" && CARGO_TARGET_DIR=$CARGO_TARGET_DIR cargo build --release -p tunnelmesh -p tm-dataplane)
  fi
fi
export TM_BIN_DIR

[ $# -gt 0 ] || set -- veth boringtun wireguard-go nebula custom
export CUSTOM_NAME=${CUSTOM_NAME:-tunnelmesh}
export TUNNEL_UP_CMD="$ROOT/bench/dataplane/up-ours.sh"
exec "$BENCH_DIR/run.sh" "$@"
