#!/usr/bin/env bash
# NFSv3 shares end to end over a real network, with libnfs-utils (nfs-cp, nfs-cat, nfs-ls) as
# the client nobody here wrote:
#   - the server (tm-nfs-server over an object-store directory; the node serves the same code
#     with its `nfs:` config, see s3-daemon.sh and mesh.sh) runs in namespace srv on a LAN and trusts loopback plus
#     192.0.2.2/32, standing in for the mesh CIDR (where cryptokey routing authenticates sources);
#   - from namespace in (192.0.2.2): copy a 5 MiB file in, read it back byte for byte, list it;
#   - from namespace out (192.0.2.3, outside the "mesh"): the mount is refused, nothing is read;
#   - a read-only share refuses writes;
#   - after a server restart (SIGTERM, clean exit) the file is still there with the same bytes.
source "$(dirname "$0")/../lib/netns.sh"
tm_init nfs 200

BIN=${TM_NFS_SERVER:-$TM_BIN_DIR/tm-nfs-server}
[[ -x $BIN ]] || fail "$BIN not found (run: cargo build --release --workspace, or set TM_BIN_DIR)"
for t in nfs-cp nfs-cat nfs-ls; do
    command -v "$t" >/dev/null || skip "$t missing (libnfs-utils; run scripts/install-test-deps.sh)"
done

lan_create srv in out
SRV=$(lan_ip srv)
DATA=$TM_TMP/data
url() { printf 'nfs://%s/shares/%s%s?version=3&nfsport=2049&mountport=2049' "$SRV" "$1" "$2"; }

start_server() {
    ns_spawn srv nfs-server.log "$BIN" --data "$DATA" --listen "$SRV:2049" \
        --allow "$(lan_ip in)/32" --share archive:ro --portmap
    SRV_PID=$TM_LAST_PID
    wait_for 15 "NFS server listening" \
        ns_exec srv bash -c "ss -ltnH 'sport = :2049' | grep -q ." ||
        fail "tm-nfs-server did not start"
}

start_server
head -c $((5 * 1024 * 1024 + 123)) /dev/urandom >"$TM_TMP/blob.bin"

run_step "nfs-cp a file into the default share from inside the mesh" \
    ns_exec in nfs-cp "$TM_TMP/blob.bin" "$(url default /blob.bin)"
ns_exec in nfs-cat "$(url default /blob.bin)" >"$TM_TMP/back.bin" || fail "nfs-cat from inside"
cmp -s "$TM_TMP/blob.bin" "$TM_TMP/back.bin" || fail "nfs-cat returned different bytes"
log "ok: 5 MiB read back byte for byte"
ns_exec in nfs-ls "$(url default /)" >"$TM_TMP/ls.txt" 2>&1 || fail "nfs-ls from inside"
grep -q "blob.bin" "$TM_TMP/ls.txt" || fail "nfs-ls does not show blob.bin: $(cat "$TM_TMP/ls.txt")"
log "ok: nfs-ls lists blob.bin"

# Stock clients ask the portmapper (port 111) for MOUNT and NFS: no port options needed.
if command -v rpcinfo >/dev/null; then
    out=$(ns_exec in timeout 10 rpcinfo -p "$SRV" 2>&1) || fail "rpcinfo -p $SRV: $out"
    grep -Eq '100000 +2 +udp +111' <<<"$out" || fail "rpcinfo -p: no portmapper v2 on udp 111: $out"
    grep -Eq '100005 +3 +tcp +2049' <<<"$out" || fail "rpcinfo -p: no MOUNT v3 on 2049: $out"
    grep -Eq '100003 +3 +tcp +2049' <<<"$out" || fail "rpcinfo -p: no NFS v3 on 2049: $out"
    out=$(ns_exec in timeout 10 rpcinfo -T tcp "$SRV" 100003 3 2>&1) || fail "rpcinfo -T tcp NFS v3 NULL: $out"
    log "ok: rpcinfo -p lists the portmapper, MOUNT and NFS v3 on 2049; NFS answers NULL"
    out=$(ns_exec out timeout 5 rpcinfo -p "$SRV" 2>&1) && fail "the portmapper answered a client outside the mesh: $out"
else
    fail "rpcinfo missing (rpcbind; run scripts/install-test-deps.sh)"
fi
ns_exec in nfs-ls "nfs://$SRV/shares/default/?version=3" >"$TM_TMP/ls-noport.txt" 2>&1 ||
    fail "nfs-ls without nfsport/mountport: $(cat "$TM_TMP/ls-noport.txt")"
grep -q "blob.bin" "$TM_TMP/ls-noport.txt" || fail "nfs-ls without ports does not show blob.bin"
log "ok: nfs-ls without nfsport/mountport lists blob.bin (through the portmapper)"

# Outside the mesh: refused at MNT, so neither listing nor reading works.
if ns_exec out nfs-ls "$(url default /)" >"$TM_TMP/out-ls.txt" 2>&1; then
    fail "a source outside the mesh could list the share: $(cat "$TM_TMP/out-ls.txt")"
fi
if ns_exec out nfs-cat "$(url default /blob.bin)" >"$TM_TMP/out-cat.bin" 2>/dev/null; then
    fail "a source outside the mesh could read a file"
fi
[[ -s $TM_TMP/out-cat.bin ]] && fail "bytes leaked to a source outside the mesh"
log "ok: source outside the mesh refused ($(head -c 200 "$TM_TMP/out-ls.txt" | tr '\n' ' '))"

# Read-only share.
if ns_exec in nfs-cp "$TM_TMP/blob.bin" "$(url archive /x.bin)" 2>"$TM_TMP/ro.txt"; then
    fail "a write to the read-only share succeeded"
fi
log "ok: read-only share refused the write ($(head -c 200 "$TM_TMP/ro.txt" | tr '\n' ' '))"

# Restart: the data (and the handles, see the cargo tests) survive.
stop_pid "$SRV_PID" TERM 15
rc=$?
assert_eq "$rc" 0 "tm-nfs-server exit code after SIGTERM"
start_server
ns_exec in nfs-cat "$(url default /blob.bin)" >"$TM_TMP/back2.bin" || fail "nfs-cat after restart"
cmp -s "$TM_TMP/blob.bin" "$TM_TMP/back2.bin" || fail "different bytes after restart"
log "ok: same bytes after a server restart"
pass
