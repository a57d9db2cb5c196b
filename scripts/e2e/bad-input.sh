#!/usr/bin/env bash
# Hostile datagrams at a TunnelMesh node (a), from an attacker namespace (c) and from its
# wireguard-go peer (b), and the drop counters of `tmctl status --json` that must count them:
#   1. random message types                     -> drops.unknown_type
#   2. truncated handshake/data messages         -> drops.malformed
#   3. well-sized data messages, unknown index   -> drops.unknown_receiver
#   4. a captured data packet of b, resent       -> drops.replay
#   5. b sends from an inner source outside the allowed IPs a grants it -> drops.source_not_allowed
# Afterwards the tunnel still pings both ways and the dataplane never restarted.
source "$(dirname "$0")/../lib/netns.sh"
source "$(dirname "$0")/../lib/node.sh"
tm_init bad-input 150
KIND=${TM_NODE_KIND:-tm} # wg: harness self-test, counters not checked

lan_create a b c
node_new a "$KIND" 1
node_new b wg 2
node_connect a b
node_up a
node_up b
A=$(node_mesh_ip a)
B=$(node_mesh_ip b)
A_UDP="$(lan_ip a):${NODE_PORT[a]}"
wait_for 10 "ping b -> a" ping_ok b "$A" 1 || fail "no tunnel between wireguard-go b and our node a"

drop() { if [[ $KIND == tm ]]; then node_drop a "$1"; else echo 0; fi; }

# expect_drop REASON BASE MIN WHAT : wait up to 5 s for drops.REASON >= BASE+MIN, then assert
# (counters may be published by the dataplane periodically).
drop_reached() { (($(drop "$1") >= $2)); }
expect_drop() {
    [[ $KIND == tm ]] || { log "self-test: drops.$1 not checked"; return 0; }
    wait_for 5 "drops.$1 >= $(($2 + $3))" drop_reached "$1" $(($2 + $3)) || true
    assert_ge "$(drop "$1")" $(($2 + $3)) "drops.$1 $4 (was $2)"
}

# send_junk NS KIND COUNT : datagrams from NS to a's UDP port.
send_junk() {
    ns_exec "$1" python3 -c '
import os, random, socket, struct, sys
host, port = sys.argv[1].rsplit(":", 1)
kind, n = sys.argv[2], int(sys.argv[3])
rng = random.Random(42)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(n):
    if kind == "unknown_type":
        # Header is a little-endian u32 type; valid types are 1..4.
        t = rng.choice([0, 5, 6, 7, 0x41, 0xff, 0x10000001, 0xffffffff])
        body = os.urandom(rng.choice([0, 12, 28, 60, 144, 300]))
        pkt = struct.pack("<I", t) + body
    elif kind == "malformed":
        # Known type, wrong size: init is 148 B, response 92, cookie reply 64, data >= 32.
        t, size = rng.choice([(1, 4), (1, 100), (1, 147), (2, 91), (2, 50), (3, 63), (3, 10),
                              (4, 4), (4, 16), (4, 31)])
        pkt = struct.pack("<I", t) + os.urandom(size - 4)
    elif kind == "tiny":
        pkt = os.urandom(rng.choice([0, 1, 2, 3]))
    elif kind == "unknown_receiver":
        # type 4, random receiver index, counter, 64 B "ciphertext" incl. tag.
        pkt = struct.pack("<II", 4, rng.getrandbits(32)) + struct.pack("<Q", i) + os.urandom(64)
    s.sendto(pkt, (host, int(port)))
' "$A_UDP" "$2" "$3"
}

# 1-3: junk from the attacker namespace.
m0=$(drop malformed)
u0=$(drop unknown_type)
r0=$(drop unknown_receiver)
run_step "200 datagrams with unknown message types from c" send_junk c unknown_type 200
run_step "200 truncated datagrams from c" send_junk c malformed 200
run_step "20 datagrams of 0-3 bytes from c" send_junk c tiny 20
run_step "200 data messages with unknown receiver index from c" send_junk c unknown_receiver 200
expect_drop unknown_type "$u0" 1 "after 200 unknown-type datagrams"
expect_drop malformed "$m0" 1 "after 220 truncated datagrams"
expect_drop unknown_receiver "$r0" 1 "after 200 data messages with a random receiver index"
[[ $KIND == tm ]] && node_dump a
run_step "tunnel pings after junk" ping_ok b "$A" 3

# 4: replay. Capture one data packet (type 4, longer than a keepalive) that b sends to a.
ns_spawn b capture.log timeout 20 python3 -c '
import socket, struct, sys
dst_ip, dst_port, out = socket.inet_aton(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind(("eth0", 0))
while True:
    frame, addr = s.recvfrom(65535)
    if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
        continue
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[9] != 17 or ip[16:20] != dst_ip:
        continue
    udp = ip[ihl:]
    if struct.unpack("!H", udp[2:4])[0] != dst_port:
        continue
    payload = udp[8:struct.unpack("!H", udp[4:6])[0]]
    if len(payload) > 32 and payload[:4] == b"\x04\x00\x00\x00":
        open(out, "wb").write(payload)
        print("captured data packet of", len(payload), "bytes")
        break
' "$(lan_ip a)" "${NODE_PORT[a]}" "$TM_TMP/captured.bin"
CAP_PID=$TM_LAST_PID
sleep 0.5 # let the capture socket bind
ping_ok b "$A" 3 || fail "ping b -> a during capture"
wait "$CAP_PID" || fail "capture of a data packet on b's eth0 failed (exit $?)"
[[ -s $TM_TMP/captured.bin ]] || fail "no packet captured"
rp0=$(drop replay)
run_step "resend the captured data packet 5 times from b" ns_exec b python3 -c '
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
pkt = open(sys.argv[2], "rb").read()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(5):
    s.sendto(pkt, (host, int(port)))
' "$A_UDP" "$TM_TMP/captured.bin"
expect_drop replay "$rp0" 1 "after resending a captured data packet 5x"
run_step "tunnel pings after replay" ping_ok b "$A" 3

# 5: inner source not in b's allowed IPs (a grants b only $B/32).
sn0=$(drop source_not_allowed)
ns_exec b ip addr add 100.64.0.99/32 dev "${NODE_IF[b]}" || fail "extra address on b"
if ping_ok b "$A" 5 100.64.0.99; then
    fail "a answered pings from 100.64.0.99, which is outside b's allowed IPs"
fi
expect_drop source_not_allowed "$sn0" 5 "after 5 pings from 100.64.0.99"

# The node is unharmed.
run_step "ping b -> a afterwards" ping_ok b "$A" 5
run_step "ping a -> b afterwards" ping_ok a "$B" 5
[[ $KIND == tm ]] && assert_eq "$(node_counter a "d['dataplane']['restarts']")" 0 "a: dataplane.restarts (bad input must not crash it)"
[[ $KIND == tm ]] && node_dump a
node_down a
node_down b
pass
