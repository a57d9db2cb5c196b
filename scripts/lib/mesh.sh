# shellcheck shell=bash
# Helpers for e2e tests of a joined mesh (`tunnelmesh join`): per-node config, control socket,
# tmctl/tunnelmesh against a node, readiness and mesh address. Source after netns.sh and node.sh.
#
#   conf alpha 'coordinator: {enabled: true}\n'   # $TM_TMP/alpha/config.yaml (+ extra YAML)
#   ctl alpha status --json                            # tmctl against alpha's socket
#   tm alpha node list                                 # tunnelmesh CLI against alpha's socket
#   wait_for 20 "alpha ready" ready alpha              # joined: a netmap has been applied
#   mesh_ip_of alpha                                   # alpha's mesh address

# conf NAME [EXTRA_YAML] : writes $TM_TMP/NAME/config.yaml (name, data_dir, extra).
conf() {
    mkdir -p "$TM_TMP/$1/home"
    printf 'name: %s\ndata_dir: %s\n%s' "$1" "$TM_TMP/$1" "${2:-}" >"$TM_TMP/$1/config.yaml"
}
sock() { printf '%s' "$TM_TMP/$1/control.sock"; }
ctl() { local n=$1; shift; timeout 10 "$TMCTL_BIN" --socket "$(sock "$n")" "$@"; }
tm() { local n=$1; shift; TUNNELMESH_SOCKET=$(sock "$n") timeout 20 "$TM_BIN" "$@"; }
ready() { ctl "$1" status --json | json_get 'd["mesh"]["netmap_version"]' >/dev/null; }
mesh_ip_of() { ctl "$1" status --json | json_get 'd["address"].split("/")[0]'; }
