# shellcheck shell=bash
# Mesh endpoints for the e2e tests: TunnelMesh nodes (`tunnelmesh up`) and stock WireGuard
# peers (Debian's wireguard-go + wg), behind one set of functions. Source after netns.sh.
#
#   node_new a tm 1          # endpoint "a" in namespace a: our node, mesh address 100.64.0.1
#   node_new b wg 2          # endpoint "b": wireguard-go, 100.64.0.2
#   node_connect a b         # a knows b (endpoint = b's LAN address) and b knows a
#   node_up a; node_up b     # start; waits until ready
#   ping_ok a "$(node_mesh_ip b)"
#   node_peer_json a b       # tmctl peers --json entry of b, as seen by a
#   node_down a              # SIGTERM; asserts exit 0 and that the TUN is gone
#
# Endpoint files live in $TM_TMP/<name>/ (key, pub, config.yaml, control.sock) and logs in
# $TM_TMP/<name>.log (tunnelmesh stderr/stdout, or wireguard-go's debug log).

declare -A NODE_KIND=() NODE_NS=() NODE_IDX=() NODE_IF=() NODE_PORT=() NODE_PID=()
declare -A NODE_PEERS=()   # name -> space-separated peer names
declare -A NODE_EXTRA=()   # name -> extra YAML under the top level (e.g. a testing: block)
declare -A NODE_PEER_OPTS=() # "a/b" -> extra wg-set args or YAML lines for that peer
declare -A NODE_ALLOWED=() # "a/b" -> allowed IPs a grants b (default b's /32)

TM_BIN=${TM_BIN:-$TM_BIN_DIR/tunnelmesh}
TMCTL_BIN=${TMCTL_BIN:-$TM_BIN_DIR/tmctl}

# require_tm_binaries : fail clearly if the product binaries were not built.
require_tm_binaries() {
    local b
    for b in tunnelmesh tm-dataplane tmctl; do
        [[ -x $TM_BIN_DIR/$b ]] ||
            fail "binary $TM_BIN_DIR/$b not found (run: cargo build --release --workspace, or set TM_BIN_DIR)"
    done
}

require_wg() {
    if ! command -v wireguard-go >/dev/null || ! command -v wg >/dev/null; then
        fail "wireguard-go/wg missing (run scripts/install-test-deps.sh)"
    fi
}

# node_new NAME KIND(tm|wg) INDEX [NS] : declare an endpoint; creates its key pair.
# Mesh address 100.64.0.INDEX/10, UDP port 51820 (each endpoint has its own namespace).
node_new() {
    local name=$1 kind=$2 idx=$3 ns=${4:-$1}
    NODE_KIND[$name]=$kind
    NODE_NS[$name]=$ns
    NODE_IDX[$name]=$idx
    NODE_PORT[$name]=51820
    NODE_PEERS[$name]=""
    NODE_EXTRA[$name]=""
    mkdir -p "$TM_TMP/$name"
    local key=$TM_TMP/$name/key
    case $kind in
    tm)
        require_tm_binaries
        NODE_IF[$name]=tm0
        (umask 077 && "$TM_BIN" genkey >"$key") || fail "tunnelmesh genkey"
        "$TM_BIN" pubkey <"$key" >"$TM_TMP/$name/pub" || fail "tunnelmesh pubkey"
        ;;
    wg)
        require_wg
        # wireguard-go's UAPI socket is /var/run/wireguard/<if>.sock, shared by every
        # namespace: the interface name must be unique on the machine.
        NODE_IF[$name]="wg$(($$ % 100000))$name"
        NODE_IF[$name]=${NODE_IF[$name]:0:15}
        (umask 077 && wg genkey >"$key") || fail "wg genkey"
        wg pubkey <"$key" >"$TM_TMP/$name/pub" || fail "wg pubkey"
        ;;
    *) fail "node_new: unknown kind $kind" ;;
    esac
    chmod 600 "$key"
}

node_pub() { cat "$TM_TMP/$1/pub"; }
node_mesh_ip() { printf '100.64.0.%s' "${NODE_IDX[$1]}"; }

# node_pair KIND_A KIND_B : nodes a (index 1) and b (index 2) on one LAN, peered and up;
# sets A and B to their mesh IPs.
node_pair() {
    lan_create a b
    node_new a "$1" 1
    node_new b "$2" 2
    node_connect a b
    node_up a
    node_up b
    A=$(node_mesh_ip a)
    B=$(node_mesh_ip b)
}
node_sock() { printf '%s' "$TM_TMP/$1/control.sock"; }

# node_connect A B [ALLOWED_A_GRANTS_B] [ALLOWED_B_GRANTS_A] : make A and B peers of each other.
node_connect() {
    local a=$1 b=$2
    NODE_PEERS[$a]+=" $b"
    NODE_PEERS[$b]+=" $a"
    NODE_ALLOWED[$a/$b]=${3:-$(node_mesh_ip "$b")/32}
    NODE_ALLOWED[$b/$a]=${4:-$(node_mesh_ip "$a")/32}
}

# node_write_config NAME : the YAML of a tm endpoint (also used by bad-config.sh as a base).
node_write_config() {
    local n=$1 p
    local cfg=$TM_TMP/$n/config.yaml
    {
        echo "name: $n"
        echo "data_dir: $TM_TMP/$n"
        echo "private_key_file: $TM_TMP/$n/key"
        echo "interface: ${NODE_IF[$n]}"
        echo "listen_port: ${NODE_PORT[$n]}"
        echo "address: $(node_mesh_ip "$n")/10"
        echo "mtu: 1420"
        [[ -n ${NODE_EXTRA[$n]} ]] && printf '%s\n' "${NODE_EXTRA[$n]}"
        if [[ -z ${NODE_PEERS[$n]// /} ]]; then
            echo "peers: []"
        else
            echo "peers:"
            for p in ${NODE_PEERS[$n]}; do
                echo "  - name: $p"
                echo "    public_key: \"$(node_pub "$p")\""
                [[ -n ${TM_NS_IP[${NODE_NS[$p]}]:-} ]] &&
                    echo "    endpoint: ${TM_NS_IP[${NODE_NS[$p]}]}:${NODE_PORT[$p]}"
                echo "    allowed_ips: [${NODE_ALLOWED[$n/$p]// /, }]"
                [[ -n ${NODE_PEER_OPTS[$n/$p]:-} ]] && printf '    %s\n' "${NODE_PEER_OPTS[$n/$p]}"
            done
        fi
    } >"$cfg"
}

# node_up NAME [TIMEOUT] : start the endpoint and wait until it is ready.
node_up() {
    local n=$1 t=${2:-15}
    local ns=${NODE_NS[$n]} ifn=${NODE_IF[$n]}
    case ${NODE_KIND[$n]} in
    tm)
        node_write_config "$n"
        rm -f "$(node_sock "$n")"
        echo "=== $(date +%T) tunnelmesh up ($n) ===" >>"$TM_TMP/$n.log"
        ns_spawn "$ns" "$n.log" env RUST_LOG="${TM_RUST_LOG:-info}" RUST_BACKTRACE=1 \
            "$TM_BIN" up --config "$TM_TMP/$n/config.yaml"
        NODE_PID[$n]=$TM_LAST_PID
        if ! wait_for "$t" "$n: control socket answers status" node_status_ok "$n"; then
            kill -0 "${NODE_PID[$n]}" 2>/dev/null || log "$n: tunnelmesh exited early"
            fail "$n: tunnelmesh up did not become ready within ${t}s (see $n.log)"
        fi
        wait_for 5 "$n: interface $ifn up" ns_exec "$ns" sh -c "ip -o link show dev $ifn | grep -q ',UP'" ||
            fail "$n: interface $ifn missing or down after tunnelmesh up"
        ;;
    wg)
        echo "=== $(date +%T) wireguard-go up ($n) ===" >>"$TM_TMP/$n.log"
        ns_spawn "$ns" "$n.log" env LOG_LEVEL=debug WG_PROCESS_FOREGROUND=1 \
            wireguard-go -f "$ifn"
        NODE_PID[$n]=$TM_LAST_PID
        wait_for "$t" "$n: wireguard-go UAPI socket" test -S "/var/run/wireguard/$ifn.sock" ||
            fail "$n: wireguard-go did not start (see $n.log)"
        wg_configure "$n"
        ;;
    esac
    log "$n: up (${NODE_KIND[$n]}, pid ${NODE_PID[$n]}, $(node_mesh_ip "$n") on $ifn in $ns)"
}

# wg_configure NAME : key, port, peers, address, MTU, link up for a wireguard-go endpoint.
wg_configure() {
    local n=$1 p ns=${NODE_NS[$1]} ifn=${NODE_IF[$1]}
    ns_exec "$ns" wg set "$ifn" private-key "$TM_TMP/$n/key" listen-port "${NODE_PORT[$n]}" ||
        fail "$n: wg set private-key"
    for p in ${NODE_PEERS[$n]}; do
        local args=(peer "$(node_pub "$p")" allowed-ips "${NODE_ALLOWED[$n/$p]// /,}")
        [[ -n ${TM_NS_IP[${NODE_NS[$p]}]:-} ]] &&
            args+=(endpoint "${TM_NS_IP[${NODE_NS[$p]}]}:${NODE_PORT[$p]}")
        # shellcheck disable=SC2206
        [[ -n ${NODE_PEER_OPTS[$n/$p]:-} ]] && args+=(${NODE_PEER_OPTS[$n/$p]})
        ns_exec "$ns" wg set "$ifn" "${args[@]}" || fail "$n: wg set peer $p"
    done
    ns_exec "$ns" ip addr add "$(node_mesh_ip "$n")/10" dev "$ifn" || fail "$n: ip addr"
    ns_exec "$ns" ip link set "$ifn" mtu 1420 up || fail "$n: link up"
}

# node_down NAME : SIGTERM and wait. For tm endpoints assert exit code 0 and TUN removed.
node_down() {
    local n=$1 rc
    local ns=${NODE_NS[$n]} ifn=${NODE_IF[$n]}
    stop_pid "${NODE_PID[$n]}" TERM 10
    rc=$?
    NODE_PID[$n]=""
    if [[ ${NODE_KIND[$n]} == tm ]]; then
        [[ $rc -eq 0 ]] || fail "$n: tunnelmesh exit code on SIGTERM: expected 0, got $rc"
        ns_exec "$ns" ip link show dev "$ifn" >/dev/null 2>&1 &&
            fail "$n: interface $ifn still present after tunnelmesh exited"
    else
        # wireguard-go removes its TUN when it exits; make sure for the next node_up.
        ns_exec "$ns" ip link del dev "$ifn" >/dev/null 2>&1
        rm -f "/var/run/wireguard/$ifn.sock"
    fi
    log "$n: down (exit $rc)"
}

# ---------------------------------------------------------------------------------------------
# observation

tmctl_for() {
    local n=$1
    shift
    timeout 10 "$TMCTL_BIN" --socket "$(node_sock "$n")" "$@"
}

node_status() { tmctl_for "$1" status --json; }
node_peers() { tmctl_for "$1" peers --json; }
node_status_ok() { node_status "$1" | json_get 'd["name"]' >/dev/null; }

# node_counter NAME PYEXPR : evaluate PYEXPR on `tmctl status --json` (d = document).
node_counter() {
    local out
    out=$(node_status "$1") || fail "$1: tmctl status --json failed"
    json_get "$2" <<<"$out" || fail "$1: cannot read $2 from status: $out"
}

# node_drop NAME REASON : a drop counter from status --json.
node_drop() { node_counter "$1" "d['counters']['drops']['$2']"; }

# node_peer_field NAME PEER FIELD : a field of PEER's entry in NAME's `tmctl peers --json`.
node_peer_field() {
    local out pk
    out=$(node_peers "$1") || fail "$1: tmctl peers --json failed"
    pk=$(node_pub "$2")
    json_get "[p for p in d if p['public_key'] == '$pk'][0]['$3']" <<<"$out" ||
        fail "$1: no peer entry with the key of $2 (or no field $3) in: $out"
}

# node_dump NAME : status and peers of a tm endpoint, `wg show` of a wg one, into NAME-state.log.
node_dump() {
    local n=$1
    {
        echo "=== $(date +%T) state of $n ==="
        if [[ ${NODE_KIND[$n]} == tm ]]; then
            node_status "$n"
            echo
            node_peers "$n"
        else
            ns_exec "${NODE_NS[$n]}" wg show "${NODE_IF[$n]}"
        fi
        echo
    } >>"$TM_TMP/$n-state.log" 2>&1
}
