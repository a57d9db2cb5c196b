#!/usr/bin/env bash
# Rekeying under traffic. Two TunnelMesh nodes with the `testing:` timers shortened
# (rekey after 3 s, reject after 9 s). For ~16 s (> 5 rekey periods): a continuous ping every
# 0.2 s (at most TM_REKEY_MAX_LOSS lost, default 2 of 80) while a paced TCP transfer that spans
# the rekeys runs (sha256 compared). Afterwards each side's `sessions_established` for the
# other must be > 2.
#
# Harness self-test without our binaries: TM_NODE_KIND=wg (timers cannot be shortened there,
# so the session count is not checked).
source "$(dirname "$0")/../lib/netns.sh"
source "$(dirname "$0")/../lib/node.sh"
tm_init rekey 170
KIND=${TM_NODE_KIND:-tm}
MAX_LOSS=${TM_REKEY_MAX_LOSS:-2}
PINGS=80 # at 0.2 s: 16 s

lan_create a b
node_new a "$KIND" 1
node_new b "$KIND" 2
TIMERS='testing:
  rekey_after_ms: 3000
  reject_after_ms: 9000
  rekey_timeout_ms: 1000
  keepalive_timeout_ms: 2000'
NODE_EXTRA[a]=$TIMERS
NODE_EXTRA[b]=$TIMERS
node_connect a b
node_up a
node_up b
A=$(node_mesh_ip a)
B=$(node_mesh_ip b)

wait_for 10 "first ping a -> b" ping_ok a "$B" 1 || fail "no tunnel: a cannot ping $B"
if [[ $KIND == tm ]]; then
    s0=$(node_peer_field a b sessions_established)
    log "sessions_established a->b before the run: $s0"
fi

# Continuous ping in the background, covering the whole transfer.
ns_spawn a ping.log ping -n -c "$PINGS" -i 0.2 -W 1 "$B"
PING_PID=$TM_LAST_PID

# Paced TCP transfer b <- a: 12 MiB in 64 KiB chunks every 62.5 ms, i.e. ~12 s.
make_blob "$TM_TMP/blob" 12
ns_spawn b rx.log timeout 60 socat -u "TCP-LISTEN:5301,bind=$B,reuseaddr" "OPEN:$TM_TMP/rx,creat,trunc"
RX_PID=$TM_LAST_PID
wait_for 5 "listener on b" ns_exec b sh -c "ss -Hltn 'sport = :5301' | grep -q ." || fail "no listener"
start=${EPOCHREALTIME/./}
run_step "paced 12 MiB transfer a -> b across rekeys" ns_exec a timeout 60 python3 -c '
import socket, sys, time
src, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.create_connection((host, port), timeout=10)
t0 = time.monotonic()
with open(src, "rb") as f:
    i = 0
    while True:
        chunk = f.read(65536)
        if not chunk:
            break
        s.sendall(chunk)
        i += 1
        delay = t0 + i * 0.0625 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
s.shutdown(socket.SHUT_WR)
s.close()
' "$TM_TMP/blob" "$B" 5301
wait "$RX_PID" || fail "receiver exited $?"
ms=$(elapsed_ms "$start")
assert_ge "$ms" 9000 "transfer duration in ms (must span several rekey periods)"
assert_eq "$(sha256sum <"$TM_TMP/rx" | cut -d' ' -f1)" "$(sha256sum <"$TM_TMP/blob" | cut -d' ' -f1)" "sha256 of the paced transfer"

wait "$PING_PID"
received=$(sed -n 's/.* \([0-9]\+\) received.*/\1/p' "$TM_TMP/ping.log")
[[ -n $received ]] || fail "cannot parse ping summary: $(tail -3 "$TM_TMP/ping.log")"
lost=$((PINGS - received))
log "ping: $received/$PINGS replies during rekeys"
assert_le "$lost" "$MAX_LOSS" "ping replies lost during rekeys"

if [[ $KIND == tm ]]; then
    node_dump a
    node_dump b
    assert_ge "$(node_peer_field a b sessions_established)" 3 "a: peer b sessions_established after ~16 s with rekey every 3 s"
    assert_ge "$(node_peer_field b a sessions_established)" 3 "b: peer a sessions_established after ~16 s with rekey every 3 s"
    run_step "ping after the run" ping_ok a "$B" 3
    node_down a
    node_down b
fi
pass
