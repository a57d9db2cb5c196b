#!/usr/bin/env bash
# `tunnelmesh up` with a bad config: exit code != 0, exactly one line on stderr that names the
# offending field, and no TUN device left in the namespace. A good config is run first as a
# control (TUN appears, SIGTERM -> exit 0, TUN removed), so the checks cannot pass vacuously.
source "$(dirname "$0")/../lib/netns.sh"
source "$(dirname "$0")/../lib/node.sh"
tm_init bad-config 120
unset RUST_LOG # the default log settings are part of the contract

ns_create x
node_new x tm 1
node_new p1 tm 2
node_new p2 tm 3
node_connect x p1
node_connect x p2
node_write_config x
GOOD=$TM_TMP/x/config.yaml
IFN=${NODE_IF[x]}

# Only loopback may exist in the namespace when no node runs.
links_besides_lo() { ns_exec x ip -o link show | awk -F': ' '$2 != "lo" {print $2}'; }

# --- control: the base config is valid --------------------------------------------------
log "control: good config"
ns_spawn x good.log "$TM_BIN" up --config "$GOOD"
GOOD_PID=$TM_LAST_PID
NODE_PID[x]=$GOOD_PID
wait_for 15 "interface $IFN from the good config" ns_exec x ip link show dev "$IFN" ||
    fail "good config: interface $IFN never appeared (see good.log)"
node_down x # asserts exit 0 on SIGTERM and the TUN is gone
assert_eq "$(links_besides_lo)" "" "links left after a clean exit"

# --- bad configs ----------------------------------------------------------------------------
# case NAME FIELD SED_SCRIPT [APPEND_TEXT] : derive a config from the good one, run it, check.
n_cases=0
case_() {
    local name=$1 field=$2 sedexpr=$3 append=${4:-}
    local cfg=$TM_TMP/bad-$name.yaml err=$TM_TMP/bad-$name.stderr out=$TM_TMP/bad-$name.stdout
    sed -e "$sedexpr" "$GOOD" >"$cfg"
    [[ -n $append ]] && printf '%s\n' "$append" >>"$cfg"
    if cmp -s "$cfg" "$GOOD"; then fail "case $name: test bug, config unchanged"; fi
    log "case $name: expect an error naming '$field'"
    ns_exec x timeout 15 "$TM_BIN" up --config "$cfg" </dev/null >"$out" 2>"$err"
    local rc=$?
    ((rc == 124)) && fail "case $name: tunnelmesh kept running with a bad config (killed after 15 s)"
    ((rc != 0)) || fail "case $name: exit code 0 for a bad config"
    local lines
    lines=$(grep -c . "$err")
    if ((lines != 1)); then
        sed 's/^/    stderr: /' "$err" >&2
        fail "case $name: expected exactly one line on stderr, got $lines"
    fi
    grep -qiF -- "$field" "$err" ||
        fail "case $name: stderr does not name '$field': $(cat "$err")"
    local left
    left=$(links_besides_lo)
    [[ -z $left ]] || fail "case $name: links left in the namespace after the failed start: $left"
    log "ok: case $name: exit $rc, stderr: $(cat "$err")"
    n_cases=$((n_cases + 1))
}

case_ missing-key private_key_file \
    "s|^private_key_file: .*|private_key_file: $TM_TMP/x/no-such-key|"
case_ unknown-field bogus_option \
    "\$a bogus_option: 1"
case_ unknown-peer-field colour \
    "0,/^    allowed_ips: .*/s||&\n    colour: blue|"
case_ overlapping-allowed-ips allowed_ips \
    "s|^    allowed_ips: \[100.64.0.3/32\]|    allowed_ips: [100.64.0.0/24]|"
case_ bad-cidr-address address \
    "s|^address: .*|address: 100.64.0.1/33|"
case_ bad-cidr-allowed-ips allowed_ips \
    "s|^    allowed_ips: \[100.64.0.2/32\]|    allowed_ips: [100.64.0.300/32]|"
assert_eq "$n_cases" 6 "bad-config cases checked"

# The namespace is still usable: the good config starts again.
ns_spawn x good2.log "$TM_BIN" up --config "$GOOD"
NODE_PID[x]=$TM_LAST_PID
wait_for 15 "interface $IFN after the bad runs" ns_exec x ip link show dev "$IFN" ||
    fail "good config no longer starts after the bad ones (see good2.log)"
node_down x
pass
