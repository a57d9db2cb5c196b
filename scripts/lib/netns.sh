# shellcheck shell=bash
# Network-namespace helpers for the TunnelMesh end-to-end tests.
#
# Source it from a test script, then call tm_init first:
#
#   source "$(dirname "$0")/../lib/netns.sh"
#   tm_init tunnel-pair 150        # name, overall timeout in seconds
#   lan_create a b                 # namespaces tm-tunnel-pair-$$-{a,b} on one 192.0.2.0/24 LAN
#   ns_spawn a server.log socat ...    # background process inside a namespace (killed at exit)
#   ns_exec b ping -c1 192.0.2.1       # foreground command inside a namespace
#   wait_for 5 "server listening" ns_exec a ss -ltn 'sport = :5000'
#   pass                               # or fail "why"
#
# Guarantees: every namespace is named tm-<test>-<pid>-<short>; at exit (success, failure,
# Ctrl-C, SIGTERM from an outer `timeout`, or our own watchdog) every process we spawned and
# every process still inside our namespaces is killed and the namespaces are deleted.
# Addresses used: 192.0.2.0/24 (TEST-NET-1) and the mesh addresses, only inside our namespaces.
#
# Exit codes: 0 pass, 1 fail, 77 skipped (missing facility), 124 watchdog timeout.

# ---------------------------------------------------------------------------------------------
# logging and assertions

TM_T0=${EPOCHREALTIME:-0}

log() {
    local now=${EPOCHREALTIME:-0}
    printf '[%6.2fs] %s\n' "$(awk -v a="$now" -v b="$TM_T0" 'BEGIN{print a-b}')" "$*" >&2
}

fail() {
    log "FAIL: $*"
    exit 1
}

skip() {
    log "SKIP: $*"
    exit 77
}

pass() {
    log "PASS: ${TM_TEST:-test}"
    exit 0
}

# assert_eq ACTUAL EXPECTED WHAT
assert_eq() {
    [[ "$1" == "$2" ]] || fail "$3: expected '$2', got '$1'"
    log "ok: $3 == $2"
}

# assert_ge ACTUAL MIN WHAT  (integers)
assert_ge() {
    [[ "$1" =~ ^-?[0-9]+$ ]] || fail "$3: not an integer: '$1'"
    (($1 >= $2)) || fail "$3: expected >= $2, got $1"
    log "ok: $3 = $1 (>= $2)"
}

# assert_le ACTUAL MAX WHAT  (integers)
assert_le() {
    [[ "$1" =~ ^-?[0-9]+$ ]] || fail "$3: not an integer: '$1'"
    (($1 <= $2)) || fail "$3: expected <= $2, got $1"
    log "ok: $3 = $1 (<= $2)"
}

# run_step DESCRIPTION CMD... : run CMD, fail the test naming the step if it fails.
run_step() {
    local what=$1
    shift
    log "step: $what"
    "$@" || fail "$what (exit $?)"
}

# json_get EXPR < json : print eval(EXPR) with the parsed document bound to `d`.
# Lists/dicts are printed as JSON, None as "null", booleans as true/false.
json_get() {
    python3 -c '
import json, sys
d = json.load(sys.stdin)
v = eval(sys.argv[1], {"d": d, "len": len, "sum": sum, "any": any, "all": all})
print(json.dumps(v) if isinstance(v, (dict, list, bool)) or v is None else v)
' "$1"
}

# ---------------------------------------------------------------------------------------------
# setup / teardown

# Repository root and binaries.
TM_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
: "${TM_BIN_DIR:=${CARGO_TARGET_DIR:-$TM_REPO/target}/release}"

TM_NAMESPACES=()          # full names, in creation order
declare -A TM_NS_IP=()    # short name -> LAN address
TM_HUB=""                 # bridge namespace of lan_create
TM_WATCHDOG_PID=""
TM_LAST_PID=""

# tm_init NAME [TIMEOUT_SECS]
# Creates the work dir ($TM_TMP), the namespace prefix ($TM_PREFIX), installs the cleanup
# trap and a watchdog that ends the test after TIMEOUT_SECS (default 170).
tm_init() {
    TM_TEST=$1
    local timeout=${2:-170}
    set -uo pipefail
    [[ $(id -u) -eq 0 ]] || skip "must run as root"
    command -v ip >/dev/null || skip "iproute2 missing (run scripts/install-test-deps.sh)"
    TM_PREFIX="tm-$TM_TEST-$$"
    TM_TMP=$(mktemp -d "/tmp/tm-e2e-$TM_TEST-$$.XXXX")
    : >"$TM_TMP/pids"
    export TM_TMP TM_PREFIX TM_TEST
    # Our own tests must not inherit a caller's logging config or socket.
    unset TUNNELMESH_SOCKET
    trap tm_cleanup EXIT
    trap 'log "interrupted"; exit 130' INT
    trap 'log "terminated (timeout?)"; exit 124' TERM
    # Watchdog: after the deadline, kill everything we started (so a blocked foreground
    # command returns), then SIGTERM the test shell, whose trap runs the cleanup.
    (
        trap - EXIT INT TERM
        sleep "$timeout" &
        wait $!
        printf '[watchdog] %s: overall timeout of %ss reached\n' "$TM_TEST" "$timeout" >&2
        echo "$timeout" >"$TM_TMP/timed_out"
        kill -TERM $$ 2>/dev/null
        tm_kill_all TERM
    ) &
    TM_WATCHDOG_PID=$!
    log "test $TM_TEST: prefix $TM_PREFIX, workdir $TM_TMP, timeout ${timeout}s"
}

# tm_kill_all SIGNAL : signal every process we spawned and every process in our namespaces.
tm_kill_all() {
    local sig=$1 pid ns
    while read -r pid; do
        [[ -n $pid ]] && kill "-$sig" "$pid" 2>/dev/null
    done <"$TM_TMP/pids"
    for ns in $(tm_list_namespaces); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill "-$sig" "$pid" 2>/dev/null
        done
    done
    return 0
}

# Namespaces of this test (also finds ones created by a subshell).
tm_list_namespaces() {
    ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${TM_PREFIX}-" || true
}

tm_cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [[ -f "$TM_TMP/timed_out" ]] && rc=124
    # The watchdog's sleep first (listed before the watchdog dies: an orphan would keep the
    # test's stdout open, so a pipe reading it waited for the whole timeout).
    if [[ -n $TM_WATCHDOG_PID ]]; then
        local wd_kids
        wd_kids=$(pgrep -P "$TM_WATCHDOG_PID" 2>/dev/null)
        kill "$TM_WATCHDOG_PID" 2>/dev/null
        [[ -n $wd_kids ]] && kill $wd_kids 2>/dev/null
    fi
    tm_kill_all TERM
    # Give daemons a moment to remove their TUN devices, then insist.
    local i
    for i in 1 2 3 4 5 6 7 8 9 10; do
        tm_any_alive || break
        sleep 0.2
    done
    tm_kill_all KILL
    wait 2>/dev/null
    local ns
    for ns in $(tm_list_namespaces); do
        ip netns del "$ns" 2>/dev/null || log "cleanup: could not delete namespace $ns"
        [[ -n $ns ]] && rm -rf "/etc/netns/$ns"
    done
    if ((rc != 0)); then
        tm_dump_logs
        log "result: exit $rc; work dir kept: $TM_TMP"
    elif [[ -n ${TM_KEEP:-} ]]; then
        log "work dir kept: $TM_TMP"
    else
        rm -rf "$TM_TMP"
    fi
    exit "$rc"
}

tm_any_alive() {
    local pid
    while read -r pid; do
        [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && return 0
    done <"$TM_TMP/pids"
    return 1
}

# Print the tail of every log in the work dir (shown by scripts/test.sh on failure).
tm_dump_logs() {
    local f
    for f in "$TM_TMP"/*.log; do
        [[ -s $f ]] || continue
        printf '\n----- %s (last %s lines) -----\n' "${f##*/}" "${TM_LOG_TAIL:-25}" >&2
        tail -n "${TM_LOG_TAIL:-25}" "$f" >&2
    done
}

# ---------------------------------------------------------------------------------------------
# namespaces and links

ns_name() { printf '%s-%s' "$TM_PREFIX" "$1"; }

# ns_create SHORT... : new namespaces with loopback up.
ns_create() {
    local s full
    for s in "$@"; do
        full=$(ns_name "$s")
        ip netns add "$full" || fail "ip netns add $full"
        TM_NAMESPACES+=("$full")
        # Its own resolv.conf (`ip netns exec` bind-mounts it over /etc/resolv.conf): a node
        # manages the file it sees (dns.manage_system), never the host's.
        mkdir -p "/etc/netns/$full"
        cp /etc/resolv.conf "/etc/netns/$full/resolv.conf" 2>/dev/null ||
            : >"/etc/netns/$full/resolv.conf"
        ip -n "$full" link set lo up || fail "lo up in $full"
    done
}

# ns_exec SHORT CMD... : run CMD inside the namespace (foreground).
ns_exec() {
    local s=$1
    shift
    ip netns exec "$(ns_name "$s")" "$@"
}

# ns_spawn SHORT LOGNAME CMD... : start CMD in the background inside the namespace with
# stdout+stderr to $TM_TMP/LOGNAME; its pid is left in TM_LAST_PID and killed at exit.
# (`ip netns exec` execs the command, so the pid is the command's own.)
ns_spawn() {
    local s=$1 logname=$2
    shift 2
    ip netns exec "$(ns_name "$s")" "$@" </dev/null >>"$TM_TMP/$logname" 2>&1 &
    TM_LAST_PID=$!
    echo "$TM_LAST_PID" >>"$TM_TMP/pids"
}

# spawn LOGNAME CMD... : like ns_spawn in the root namespace (for tools that need no netns).
spawn() {
    local logname=$1
    shift
    "$@" </dev/null >>"$TM_TMP/$logname" 2>&1 &
    TM_LAST_PID=$!
    echo "$TM_LAST_PID" >>"$TM_TMP/pids"
}

# stop_pid PID [SIGNAL] [TIMEOUT_SECS] : signal a child of this shell and wait for it; returns
# its exit code (128+n if it died of signal n; 137 if it had to be SIGKILLed after TIMEOUT).
stop_pid() {
    local pid=$1 sig=${2:-TERM} t=${3:-10} rc killer
    kill "-$sig" "$pid" 2>/dev/null
    (
        trap - EXIT INT TERM
        sleep "$t" &
        wait $! || exit 0 # sleep killed: the process exited in time
        kill -KILL "$pid" 2>/dev/null && echo "stop_pid: $pid ignored SIG$sig for ${t}s, killed" >&2
    ) &
    killer=$!
    wait "$pid" 2>/dev/null
    rc=$?
    pkill -P "$killer" 2>/dev/null # its sleep; the subshell then exits quietly
    wait "$killer" 2>/dev/null
    return "$rc"
}

# lan_create SHORT... : create the namespaces (if needed) and join them to one Ethernet
# segment (a bridge in a hub namespace). The i-th namespace (1-based) gets interface eth0
# with 192.0.2.i/24. Look addresses up with lan_ip SHORT.
lan_create() {
    local s full i=0 hub
    if [[ -z $TM_HUB ]]; then
        TM_HUB=hub
        ns_create "$TM_HUB"
        hub=$(ns_name "$TM_HUB")
        ip -n "$hub" link add br0 type bridge forward_delay 0 || fail "bridge in $hub"
        ip -n "$hub" link set br0 up || fail "br0 up"
    fi
    hub=$(ns_name "$TM_HUB")
    i=${#TM_NS_IP[@]}
    for s in "$@"; do
        i=$((i + 1))
        full=$(ns_name "$s")
        [[ -e /run/netns/$full ]] || ns_create "$s"
        # veth created inside the hub namespace, peer end moved straight into the node's.
        ip -n "$hub" link add "v-$s" type veth peer name eth0 netns "$full" ||
            fail "veth for $s"
        ip -n "$hub" link set "v-$s" master br0 up || fail "attach v-$s"
        ip -n "$full" addr add "192.0.2.$i/24" dev eth0 || fail "address on $s"
        ip -n "$full" link set eth0 up || fail "eth0 up in $s"
        TM_NS_IP[$s]=192.0.2.$i
    done
    # Wait until every pair can reach each other (bridge ports forwarding, ARP works).
    for s in "$@"; do
        wait_for 5 "LAN reachable from $s" ns_exec "$s" ping -c1 -W1 -q "192.0.2.1" ||
            fail "LAN not reachable from $s"
    done
}

lan_ip() {
    [[ -n ${TM_NS_IP[$1]:-} ]] || fail "no LAN address for namespace '$1'"
    printf '%s' "${TM_NS_IP[$1]}"
}

# veth_pair SHORT_A SHORT_B [IP_A IP_B] : a direct veth link (no bridge) between two namespaces.
veth_pair() {
    local a=$1 b=$2 ipa=${3:-192.0.2.101/24} ipb=${4:-192.0.2.102/24}
    ip -n "$(ns_name "$a")" link add "p-$b" type veth peer name "p-$a" netns "$(ns_name "$b")" ||
        fail "veth $a<->$b"
    ip -n "$(ns_name "$a")" addr add "$ipa" dev "p-$b"
    ip -n "$(ns_name "$b")" addr add "$ipb" dev "p-$a"
    ip -n "$(ns_name "$a")" link set "p-$b" up
    ip -n "$(ns_name "$b")" link set "p-$a" up
}

# ---------------------------------------------------------------------------------------------
# waiting

# wait_for SECONDS DESCRIPTION CMD... : poll CMD (quietly) every 0.2 s until it succeeds.
# Returns 1 (and logs) at the deadline; callers usually add `|| fail ...`.
wait_for() {
    local secs=$1 what=$2
    shift 2
    local start=${EPOCHREALTIME/./}
    local limit=$((secs * 1000000))
    while :; do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        if ((${EPOCHREALTIME/./} - start >= limit)); then
            log "timed out after ${secs}s waiting for: $what"
            return 1
        fi
        sleep 0.2
    done
}

# elapsed_ms START : milliseconds since START (a value of ${EPOCHREALTIME/./}).
elapsed_ms() { echo $(((${EPOCHREALTIME/./} - $1) / 1000)); }

# ---------------------------------------------------------------------------------------------
# traffic

# ping_ok NS DEST [COUNT] [SRC] : COUNT (default 3) pings at 0.2 s, all must answer.
ping_ok() {
    local ns=$1 dst=$2 n=${3:-3} src=${4:-}
    ns_exec "$ns" ping -q -n -c "$n" -i 0.2 -W 2 ${src:+-I "$src"} "$dst" >/dev/null 2>&1
}

# ping_loss NS DEST COUNT INTERVAL : prints the number of lost replies.
ping_loss() {
    local ns=$1 dst=$2 n=$3 i=$4 out
    out=$(ns_exec "$ns" ping -n -q -c "$n" -i "$i" -W 1 "$dst" 2>&1)
    local rx
    rx=$(sed -n 's/.* \([0-9]\+\) received.*/\1/p' <<<"$out")
    echo $((n - ${rx:-0}))
}

# make_blob FILE MIB : random content of MIB MiB.
make_blob() {
    head -c "$(($2 * 1024 * 1024))" /dev/urandom >"$1" || fail "make_blob $1"
}

# tcp_transfer FROM_NS TO_NS TO_ADDR PORT SRC_FILE DST_FILE [TIMEOUT]
# Sends SRC_FILE over TCP (socat) from FROM_NS to a listener in TO_NS bound to TO_ADDR and
# checks the sha256 of what arrived. Returns non-zero (and logs why) on any mismatch.
tcp_transfer() {
    local from=$1 to=$2 addr=$3 port=$4 src=$5 dst=$6 t=${7:-60}
    rm -f "$dst"
    ns_spawn "$to" "socat-rx-$port.log" timeout "$t" \
        socat -u "TCP-LISTEN:$port,bind=$addr,reuseaddr" "OPEN:$dst,creat,trunc"
    local rx=$TM_LAST_PID
    if ! wait_for 5 "listener $addr:$port in $to" ns_exec "$to" sh -c "ss -Hltn 'sport = :$port' | grep -q ."; then
        return 1
    fi
    local start=${EPOCHREALTIME/./}
    if ! ns_exec "$from" timeout "$t" socat -u "OPEN:$src" "TCP:$addr:$port,connect-timeout=5" \
        >>"$TM_TMP/socat-tx-$port.log" 2>&1; then
        log "tcp_transfer: sender $from -> $addr:$port failed (see socat-tx-$port.log)"
        kill "$rx" 2>/dev/null
        return 1
    fi
    wait "$rx"
    local rc=$?
    local ms
    ms=$(elapsed_ms "$start")
    if ((rc != 0)); then
        log "tcp_transfer: receiver in $to exited $rc"
        return 1
    fi
    local a b
    a=$(sha256sum <"$src" | cut -d' ' -f1)
    b=$(sha256sum <"$dst" | cut -d' ' -f1)
    if [[ $a != "$b" ]]; then
        log "tcp_transfer: sha256 mismatch $from->$to: sent $a ($(stat -c %s "$src") B), got $b ($(stat -c %s "$dst") B)"
        return 1
    fi
    log "tcp_transfer: $from -> $to ($addr:$port) $(stat -c %s "$src") bytes in ${ms} ms, sha256 ok"
}
