#!/usr/bin/env bash
# One-command NFS benchmark: tm-nfs-server (TunnelMesh shares on the object store) vs
# nfs-ganesha 4.3 from Debian (FSAL VFS on local disk), side by side in the same run.
#
# Each server runs in its own network namespace; the client (nfsbench.c, linked against libnfs,
# the library behind nfs-cp/nfs-cat) runs in a third one and reaches both over veth pairs
# (10.233.1.0/30 and 10.233.2.0/30, addresses only inside our namespaces). Data dirs of both
# servers live under $OUT on the same disk. Figures: sequential write and read MB/s of a 1 GiB
# file (1 MiB calls, write ends with fsync = COMMIT), small-file create (creat + 4 KiB write +
# close) and stat ops/s. Scenarios alternate between the servers, ROUNDS times (median shown).
#
#   sudo bench/nfs/run.sh            # env: ROUNDS (5), SIZE_MIB (1024), FILES (1000), OUT,
#                                    #      TM_NFS_SERVER (prebuilt binary), CARGO_TARGET_DIR
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
OUT="${OUT:-/tmp/tm-nfsbench}"
ROUNDS="${ROUNDS:-5}"
SIZE_MIB="${SIZE_MIB:-1024}"
FILES="${FILES:-1000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
P="tmnfsb$$"

[[ $(id -u) -eq 0 ]] || { echo "run as root (network namespaces)" >&2; exit 1; }
need_apt=()
command -v ganesha.nfsd >/dev/null || need_apt+=(nfs-ganesha nfs-ganesha-vfs)
[[ -f /usr/include/nfsc/libnfs.h ]] || need_apt+=(libnfs-dev)
if ((${#need_apt[@]})); then
    echo "== apt-get install ${need_apt[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_apt[@]}" >/dev/null
fi
mkdir -p "$OUT"
echo "== build nfsbench (libnfs) and tm-nfs-server (release)"
gcc -O2 -Wall -o "$OUT/nfsbench" "$HERE/nfsbench.c" -lnfs
if [[ -z ${TM_NFS_SERVER:-} ]]; then
    (cd "$REPO" && cargo build --release -p tm-nfs --bin tm-nfs-server)
    TM_NFS_SERVER="$CARGO_TARGET_DIR/release/tm-nfs-server"
fi

DATA_TM="$(mktemp -d "$OUT/data-tm.XXXXXX")"
DATA_GA="$(mktemp -d "$OUT/data-ganesha.XXXXXX")"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 1
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for n in cli tm ga; do ip netns del "$P-$n" 2>/dev/null || true; done
    rm -rf "$DATA_TM" "$DATA_GA"
}
trap cleanup EXIT

for n in cli tm ga; do ip netns add "$P-$n"; ip -n "$P-$n" link set lo up; done
ip -n "$P-cli" link add vtm type veth peer name eth0 netns "$P-tm"
ip -n "$P-cli" link add vga type veth peer name eth0 netns "$P-ga"
ip -n "$P-cli" addr add 10.233.1.1/30 dev vtm
ip -n "$P-cli" addr add 10.233.2.1/30 dev vga
ip -n "$P-tm" addr add 10.233.1.2/30 dev eth0
ip -n "$P-ga" addr add 10.233.2.2/30 dev eth0
for l in vtm vga; do ip -n "$P-cli" link set "$l" up; done
for n in tm ga; do ip -n "$P-$n" link set eth0 up; done

ip netns exec "$P-tm" "$TM_NFS_SERVER" --data "$DATA_TM" --listen 10.233.1.2:2049 \
    --allow 10.233.1.1/32 >"$OUT/tm-nfs.log" 2>&1 &
PIDS+=($!)

cat >"$OUT/ganesha.conf" <<CONF
NFS_CORE_PARAM {
    NFS_Port = 2049;
    MNT_Port = 20048;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Protocols = 3;
    Bind_addr = 10.233.2.2;
}
NFSV4 { Graceless = true; }
NFS_KRB5 { Active_krb5 = false; }
EXPORT {
    Export_Id = 77;
    Path = "$DATA_GA";
    Pseudo = "/bench";
    Protocols = 3;
    Transports = TCP;
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    FSAL { Name = VFS; }
}
LOG { Default_Log_Level = WARN; }
CONF
mkdir -p /var/run/ganesha /var/lib/nfs/ganesha
if command -v rpcbind >/dev/null; then
    ip netns exec "$P-ga" rpcbind -w -f >"$OUT/rpcbind.log" 2>&1 &
    PIDS+=($!)
fi
ip netns exec "$P-ga" ganesha.nfsd -F -L "$OUT/ganesha.log" -f "$OUT/ganesha.conf" \
    -p "$OUT/ganesha.pid" >"$OUT/ganesha.out" 2>&1 &
PIDS+=($!)

URL_TM="nfs://10.233.1.2/shares/default?version=3&nfsport=2049&mountport=2049"
URL_GA="nfs://10.233.2.2$DATA_GA?version=3&nfsport=2049&mountport=20048"
bench() { ip netns exec "$P-cli" "$OUT/nfsbench" "$@"; }
for u in "$URL_TM" "$URL_GA"; do
    ok=0
    for _ in $(seq 1 100); do
        if bench "$u" smallfiles 1 >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.3
    done
    ((ok)) || { echo "server for $u did not come up; logs in $OUT" >&2; tail -5 "$OUT"/*.log >&2; exit 1; }
done

declare -A R=()
for r in $(seq 1 "$ROUNDS"); do
    for s in tm ga; do
        u=URL_${s^^}
        echo "== round $r: $s"
        while read -r k v _; do R[$s.$k]+="$v "; done < <(
            bench "${!u}" seqwrite "$SIZE_MIB"
            bench "${!u}" seqread "$SIZE_MIB"
            bench "${!u}" smallfiles "$FILES"
        )
    done
done
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
{
    echo "| metric | TunnelMesh (tm-nfs) | nfs-ganesha 4.3 VFS |"
    echo "|---|---:|---:|"
    for k in seq_write_MBps:"sequential write 1 GiB (MB/s)" seq_read_MBps:"sequential read 1 GiB (MB/s)" \
        create_4k_ops:"create + 4 KiB write ($FILES files, ops/s)" stat_ops:"stat ($FILES files, ops/s)"; do
        echo "| ${k#*:} | $(median "${R[tm.${k%%:*}]:-}") | $(median "${R[ga.${k%%:*}]:-}") |"
    done
} | tee "$OUT/results.md"
echo "(median of $ROUNDS rounds; $(nproc) cores; $(date -u +%F); raw: ${R[*]@K})" | tee -a "$OUT/results.md" >/dev/null
