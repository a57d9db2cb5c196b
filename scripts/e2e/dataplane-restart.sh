#!/usr/bin/env bash
# tunnelmesh supervises tm-dataplane: `kill -9` of node a's dataplane child must be followed by
# a restart (new pid, dataplane.restarts == 1, running) with tunnelmesh itself untouched, and
# traffic must resume within a few seconds (ping both ways, a TCP transfer).
source "$(dirname "$0")/../lib/netns.sh"
source "$(dirname "$0")/../lib/node.sh"
tm_init dataplane-restart 120
RESUME_SECS=${TM_RESUME_SECS:-5}

node_pair tm tm
wait_for 10 "ping a -> b" ping_ok a "$B" 1 || fail "no tunnel before the kill"
run_step "ping b -> a before the kill" ping_ok b "$A" 3

node_dump a
assert_eq "$(node_counter a "d['dataplane']['restarts']")" 0 "a: dataplane.restarts before the kill"
assert_eq "$(node_counter a "d['dataplane']['running']")" true "a: dataplane.running before the kill"
dp=$(node_counter a "d['dataplane']['pid']")
[[ $dp =~ ^[0-9]+$ ]] || fail "a: dataplane.pid is '$dp'"
# The pid tmctl reports must be tunnelmesh's tm-dataplane child.
ppid=$(ps -o ppid= -p "$dp" | tr -d ' ')
comm=$(ps -o comm= -p "$dp")
assert_eq "$ppid" "${NODE_PID[a]}" "parent of dataplane pid $dp (tunnelmesh pid)"
assert_eq "$comm" "tm-dataplane" "command name of pid $dp"

log "kill -9 tm-dataplane pid $dp"
kill -KILL "$dp" || fail "kill -9 $dp"
start=${EPOCHREALTIME/./}
restarted() { [[ $(node_counter a "d['dataplane']['restarts']") == 1 && $(node_counter a "d['dataplane']['running']") == true ]]; }
wait_for "${TM_RESTART_SECS:-3}" "dataplane.restarts == 1 and running" restarted ||
    fail "tm-dataplane not reported restarted and running within ${TM_RESTART_SECS:-3}s of kill -9"
log "dataplane restarted (reported by tmctl) $(elapsed_ms "$start") ms after kill -9"
wait_for "$RESUME_SECS" "ping a -> b after the kill" ping_ok a "$B" 1 ||
    fail "traffic did not resume within ${RESUME_SECS}s after kill -9 of tm-dataplane"
log "ping resumed $(elapsed_ms "$start") ms after kill -9"

kill -0 "${NODE_PID[a]}" 2>/dev/null || fail "tunnelmesh (pid ${NODE_PID[a]}) died with its dataplane"
node_dump a
assert_eq "$(node_counter a "d['dataplane']['restarts']")" 1 "a: dataplane.restarts after one kill"
assert_eq "$(node_counter a "d['dataplane']['running']")" true "a: dataplane.running after the restart"
dp2=$(node_counter a "d['dataplane']['pid']")
[[ $dp2 =~ ^[0-9]+$ && $dp2 != "$dp" ]] || fail "a: dataplane.pid after restart is '$dp2' (was $dp)"
assert_eq "$(ps -o ppid= -p "$dp2" | tr -d ' ')" "${NODE_PID[a]}" "parent of the new dataplane pid"

run_step "ping a -> b after restart (5x)" ping_ok a "$B" 5
run_step "ping b -> a after restart (5x)" ping_ok b "$A" 5
make_blob "$TM_TMP/blob" 10
run_step "10 MiB TCP b -> a after restart" tcp_transfer b a "$A" 5401 "$TM_TMP/blob" "$TM_TMP/rx" 60
run_step "10 MiB TCP a -> b after restart" tcp_transfer a b "$B" 5402 "$TM_TMP/blob" "$TM_TMP/rx" 60
node_down a
node_down b
pass
