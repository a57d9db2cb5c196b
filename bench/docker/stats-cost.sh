#!/usr/bin/env bash
# CPU cost of polling `docker stats --json` for every container of a node (issue 21: "cheap
# enough to poll every 15 s"). One coordinator node in a network namespace with the host's Docker
# engine, N busybox containers (image as in scripts/e2e/docker.sh), K polls of
# `tunnelmesh docker stats --node coord --json` back to back; the node's CPU time (utime+stime of
# the tunnelmesh process, which runs the agent) over the polls, minus the same process's CPU over
# an idle window of the same length. dockerd's CPU over the polls is shown beside it (the engine's
# share, not the agent's).
#
#   sudo TM_BIN_DIR=target/release bench/docker/stats-cost.sh [CONTAINERS=20] [POLLS=20]
source "$(dirname "$0")/../../scripts/lib/netns.sh"
source "$(dirname "$0")/../../scripts/lib/node.sh"
source "$(dirname "$0")/../../scripts/lib/mesh.sh"
N=${1:-20}
K=${2:-20}
tm_init docker-stats-bench 600
require_tm_binaries
timeout 10 docker info >/dev/null 2>&1 || fail "no Docker engine (start dockerd)"
IMAGE=tm-busybox:e2e
docker image inspect "$IMAGE" >/dev/null 2>&1 ||
    fail "image $IMAGE missing: run scripts/e2e/docker.sh once (it imports it)"
C=tmb$$
bench_exit() {
    local rc=$?
    docker ps -aq --filter "name=^$C-" | xargs -r docker rm -f >/dev/null 2>&1
    (exit "$rc")
    tm_cleanup
}
trap bench_exit EXIT
for i in $(seq "$N"); do
    docker run -d --network none --name "$C-$i" "$IMAGE" sh -c 'trap "exit 0" TERM; while true; do sleep 1; done' >/dev/null ||
        fail "docker run"
done
lan_create coord
conf coord 'coordinator: {enabled: true, listen: ":8443"}
'
ns_spawn coord coord.log env HOME="$TM_TMP/coord/home" "$TM_BIN" join --config "$TM_TMP/coord/config.yaml"
NODE=$TM_LAST_PID
wait_for 20 "coord ready" ready coord || fail "node did not start"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
DOCKERD=$(pgrep -x dockerd | head -1)
poll() { tm coord docker stats --node coord --json >"$TM_TMP/stats.json" || fail "stats: $(cat "$TM_TMP/stats.json")"; }
poll # warm up (engine client, version negotiation)
got=$(json_get 'len([c for c in d["containers"] if c["name"].startswith("'"$C"'-")])' <"$TM_TMP/stats.json")
assert_eq "$got" "$N" "containers in one stats answer"
t0=${EPOCHREALTIME/./}
a0=$(ticks "$NODE")
d0=$(ticks "$DOCKERD")
for _ in $(seq "$K"); do poll; done
a1=$(ticks "$NODE")
d1=$(ticks "$DOCKERD")
wall_us=$((${EPOCHREALTIME/./} - t0))
sleep "$(awk -v u="$wall_us" 'BEGIN{printf "%.3f", u/1e6}')"
a2=$(ticks "$NODE")
awk -v n="$N" -v k="$K" -v hz="$HZ" -v busy=$((a1 - a0)) -v idle=$((a2 - a1)) -v eng=$((d1 - d0)) -v wall="$wall_us" 'BEGIN{
    ms = (busy - idle) * 1000 / hz / k
    if (ms < 0) ms = 0
    printf "containers=%d polls=%d wall_per_poll_ms=%.1f\n", n, k, wall / 1000 / k
    printf "agent_cpu_ms_per_poll=%.2f (busy %d ticks, idle %d ticks, %d Hz) per_container_ms=%.3f\n", ms, busy, idle, hz, ms / n
    printf "agent_cpu_at_15s_interval=%.3f%% of one core\n", ms / 15000 * 100
    printf "dockerd_cpu_ms_per_poll=%.2f\n", eng * 1000 / hz / k
}'
pass
