# shellcheck shell=bash
# Several coordinators of one mesh, each serving S3 on its LAN address, plus a member namespace
# `client` whose S3 key (replicated control state) works on every coordinator. For the
# replication suite (scripts/e2e/nemesis.sh) and benchmark (bench/s3/replication.sh).
# Source after netns.sh, node.sh and mesh.sh, and after tm_init:
#
#   coords_up "replication: {factor: 2}" ca cb cc   # extra `s3:` settings, coordinator names
#   coord_start cb                                   # restart one from its disk (after kill -9)
#   coord_eps                                        # S3 endpoints, comma-separated
#   # COORD_AK / COORD_SK: the client's key; COORD_LAN[name]: a coordinator's LAN address;
#   # PID_<name>: its daemon; COORD_SKEW="+1.5s" and COORD_SKEWED=cc: run cc under libfaketime.
#
# The first coordinator is started on its own and its start-up is checked: a build that does
# not know the extra settings makes coords_up skip (exit 77) with the daemon's message.

declare -A COORD_LAN=()
COORD_NAMES=()
COORD_SKEW=${COORD_SKEW:-}
COORD_SKEWED=${COORD_SKEWED:-}

coord_start() { # coord_start NAME [join args...]
    local n=$1 pre=()
    shift
    [[ -n $COORD_SKEW && $n == "$COORD_SKEWED" ]] && pre=(faketime -f "$COORD_SKEW")
    ns_spawn "$n" "$n.log" env HOME="$TM_TMP/$n/home" TUNNELMESH_LOG="${TM_RUST_LOG:-info}" \
        FAKETIME_DONT_FAKE_MONOTONIC=1 "${pre[@]}" "$TM_BIN" join "$@" --config "$TM_TMP/$n/config.yaml"
    eval "PID_$n=$TM_LAST_PID"
    local pid=$TM_LAST_PID
    wait_for 25 "$n ready (or exited)" sh -c "! kill -0 $pid 2>/dev/null || \"$TMCTL_BIN\" --socket '$(sock "$n")' status --json >/dev/null 2>&1"
    ready "$n" && return 0
    grep -q 'unknown field' "$TM_TMP/$n.log" &&
        skip "this build does not take the settings under test: $(grep -m1 'unknown field' "$TM_TMP/$n.log")"
    fail "$n did not come up (see $n.log)"
}

coord_digest() { tm "$1" cluster status --json | json_get 'd["digest"]'; }
coords_same_state() {
    local n d0
    d0=$(coord_digest "${COORD_NAMES[0]}") || return 1
    for n in "${COORD_NAMES[@]:1}"; do [[ $(coord_digest "$n") == "$d0" ]] || return 1; done
}
coord_eps() {
    local n eps=
    for n in "${@:-${COORD_NAMES[@]}}"; do eps+="${eps:+,}http://${COORD_LAN[$n]}:8080/s3"; done
    printf '%s' "$eps"
}

coords_up() { # coords_up S3_EXTRA NAME...
    local extra=$1 n tok
    shift
    COORD_NAMES=("$@")
    [[ -n $COORD_SKEW ]] && { command -v faketime >/dev/null || fail "faketime missing (run scripts/install-test-deps.sh)"; }
    lan_create "$@" client
    for n in "$@"; do COORD_LAN[$n]=${TM_NS_IP[$n]}; done
    local conf_text="coordinator: {enabled: true, listen: \":8443\"}
s3: {listen: \":8080\"${extra:+, $extra}}
"
    conf "$1" "$conf_text"
    coord_start "$1"
    for n in "${@:2}"; do
        conf "$n" "$conf_text"
        tok=$(tm "$1" token create --coordinator --json | json_get 'd["token"]') || fail "token create --coordinator"
        coord_start "$n" "${COORD_LAN[$1]}:8443" --token "$tok"
    done
    wait_for 20 "$# coordinators hold the same state" coords_same_state || fail "coordinators differ"
    conf client
    ns_spawn client client.log env HOME="$TM_TMP/client/home" "$TM_BIN" join "${COORD_LAN[$1]}:8443" \
        --token "$(ctl "$1" token)" --config "$TM_TMP/client/config.yaml"
    wait_for 25 "client ready" ready client || fail "client did not come up (see client.log)"
    local creds
    creds=$(ctl client s3 credentials --json) || fail "tmctl s3 credentials"
    COORD_AK=$(json_get 'd["access_key"]' <<<"$creds")
    COORD_SK=$(json_get 'd["secret_key"]' <<<"$creds")
    for n in "$@"; do
        wait_for 10 "$n serves S3" ns_exec client bash -c "exec 3<>/dev/tcp/${COORD_LAN[$n]}/8080" ||
            fail "$n: no S3 listener on ${COORD_LAN[$n]}:8080"
    done
}
