#!/usr/bin/env bash
# The dataplane fast path: TUN offloads (vnet header, TSO/USO), UDP GSO/GRO and userspace GRO.
# 1. Offloads on (default): the TUN advertises TSO; 50 MiB TCP each way arrives intact and
#    the receiving TCP stack saw no out-of-order segment (TcpExtTCPOFOQueue unchanged): one
#    flow stays in order (and loss-free) through segmentation, batching, GRO and coalescing.
# 2. TSO turned off on the running device (ethtool -K tm0 tso off): the kernel segments
#    itself and the dataplane takes plain packets (partial checksums still offloaded).
# 3. Nodes restarted with TM_DP_OFFLOAD=0: no vnet header, no GSO/GRO; transfer still intact.
# No segmentation failure is counted (drops.bad_inner_packet == 0) in any phase.
source "$(dirname "$0")/../lib/netns.sh"
source "$(dirname "$0")/../lib/node.sh"
tm_init dataplane-offload 240

lan_create a b
node_new a tm 1
node_new b tm 2
node_connect a b
A=$(node_mesh_ip a)
B=$(node_mesh_ip b)
make_blob "$TM_TMP/blob" 50

ofo() { ns_exec "$1" nstat -az TcpExtTCPOFOQueue | awk '/TcpExtTCPOFOQueue/ {print $2}'; }
tso() { ns_exec "$1" ethtool -k tm0 | awk -F': ' '/^tcp-segmentation-offload/ {split($2, w, " "); print w[1]}'; }

tun_drops() { ns_exec "$1" cat /sys/class/net/tm0/statistics/tx_dropped; }

transfer_both() { # label strict
    local o d
    o=$(ofo b) d=$(tun_drops a)
    run_step "$1: 50 MiB TCP a -> b" tcp_transfer a b "$B" 5001 "$TM_TMP/blob" "$TM_TMP/rx-b" 90
    log "$1: a -> b: b out-of-order segments +$(($(ofo b) - o)), a TUN tx drops +$(($(tun_drops a) - d))"
    # With super-packets nothing is lost or reordered: any out-of-order arrival is a bug.
    # Without TSO the TUN's 500-packet queue can overflow (a loss, then OFO at the receiver),
    # as for any TUN-based VPN, so only integrity is checked there.
    [[ $2 == strict ]] && assert_eq "$(ofo b)" "$o" "$1: b TcpExtTCPOFOQueue during a -> b"
    o=$(ofo a) d=$(tun_drops b)
    run_step "$1: 50 MiB TCP b -> a" tcp_transfer b a "$A" 5002 "$TM_TMP/blob" "$TM_TMP/rx-a" 90
    log "$1: b -> a: a out-of-order segments +$(($(ofo a) - o)), b TUN tx drops +$(($(tun_drops b) - d))"
    [[ $2 == strict ]] && assert_eq "$(ofo a)" "$o" "$1: a TcpExtTCPOFOQueue during b -> a"
    for n in a b; do
        assert_eq "$(node_drop "$n" bad_inner_packet)" 0 "$1: $n drops.bad_inner_packet"
    done
}

# 1. offloads on
node_up a
node_up b
wait_for 10 "ping a -> b" ping_ok a "$B" 1 || fail "no tunnel"
assert_eq "$(tso a)" "on" "a: tm0 tcp-segmentation-offload with offloads on"
transfer_both "offload on" strict

# 2. TSO off on the live device
ns_exec a ethtool -K tm0 tso off || fail "ethtool -K tm0 tso off"
ns_exec b ethtool -K tm0 tso off || fail "ethtool -K tm0 tso off"
assert_eq "$(tso a)" "off" "a: tso after ethtool -K"
transfer_both "tso off" lenient
node_down a
node_down b

# 3. offloads disabled in the dataplane
export TM_DP_OFFLOAD=0
node_up a
node_up b
wait_for 10 "ping a -> b" ping_ok a "$B" 1 || fail "no tunnel with TM_DP_OFFLOAD=0"
assert_eq "$(tso a)" "off" "a: tm0 tcp-segmentation-offload with TM_DP_OFFLOAD=0"
transfer_both "offload off" lenient
node_down a
node_down b
rm -f "$TM_TMP/blob" "$TM_TMP/rx-a" "$TM_TMP/rx-b"
pass
