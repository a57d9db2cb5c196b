#!/usr/bin/env bash
# The replication nemesis suite (issue 20): three coordinators of one mesh in network
# namespaces, S3 on each (`s3: {listen: ":8080"}` plus the replication settings), and a client
# namespace running scripts/e2e/nemesis.py: threads write unique payloads, overwrite, delete and
# read a small key space through random coordinators while the nemesis below
#   - kill -9s a coordinator and restarts it from its disk,
#   - partitions a coordinator from the other two (iptables in its namespace; the client
#     still reaches every coordinator),
#   - SIGSTOPs a coordinator and resumes it,
#   - runs cc with its clock skewed (NEMESIS_SKEW, default +1.5 s, with libfaketime).
# After the heal the checker (nemesis.py check) verifies: every acknowledged PUT is stored with
# its exact bytes on every coordinator (current or not: the bucket is versioned); no
# acknowledged write or DELETE is undone; with NEMESIS_MODE=consistent, read-after-write; every
# coordinator serves the same listing. It prints the operation, fault and anomaly counts.
#
# Knobs: NEMESIS_SEED (default 1), NEMESIS_SECONDS (workload length, default 24),
# NEMESIS_MODE (available | consistent, default available), NEMESIS_RF (default 3).
# Self-checks of the harness: NEMESIS_REPL="" (no replication settings) must find anomalies;
# NEMESIS_REPL="" NEMESIS_ENDPOINTS=ca (one store, through kill -9 and SIGSTOP) must find none.
# Not injected yet: adding and draining a coordinator (`cluster drain` does not exist yet).
source "$(dirname "$0")/../lib/netns.sh"
source "$(dirname "$0")/../lib/node.sh"
source "$(dirname "$0")/../lib/mesh.sh"
source "$(dirname "$0")/../lib/coords.sh"
tm_init "${NEMESIS_NAME:-nemesis}" 300
require_tm_binaries
command -v iptables >/dev/null || fail "iptables missing (run scripts/install-test-deps.sh)"
python3 -c 'import boto3' 2>/dev/null || fail "boto3 missing (run scripts/install-test-deps.sh)"

SEED=${NEMESIS_SEED:-1}
SECS=${NEMESIS_SECONDS:-24}
MODE=${NEMESIS_MODE:-available}
RF=${NEMESIS_RF:-3}
BUCKET=nemesis
HERE=$(cd "$(dirname "$0")" && pwd)

# cc's clock runs NEMESIS_SKEW ahead of the others the whole run (libfaketime; the namespaces
# share one clock). Wall-clock time only: timers use the monotonic clock.
COORD_SKEW=${NEMESIS_SKEW-+1.5s}
COORD_SKEWED=cc
# NEMESIS_REPL="" runs without replication settings (the harness's self-check: anomalies).
repl="replication: {factor: $RF, mode: $MODE}"
coords_up "${NEMESIS_REPL-$repl}" ca cb cc
AK=$COORD_AK
SK=$COORD_SK
# NEMESIS_ENDPOINTS="ca": the client uses ca only (the harness's self-check on one store).
# shellcheck disable=SC2086
EPS=$(coord_eps ${NEMESIS_ENDPOINTS:-ca cb cc})
py() { ns_exec client env AWS_CONFIG_FILE=/dev/null python3 "$HERE/nemesis.py" "$@" \
    --endpoints "$EPS" --bucket "$BUCKET" --access-key "$AK" --secret-key "$SK" \
    --log "$TM_TMP/ops.jsonl"; }
# The bucket, versioned (every acknowledged PUT must stay readable), through ca.
ns_exec client env AWS_CONFIG_FILE=/dev/null python3 - "$AK" "$SK" "$(coord_eps ca)" "$BUCKET" <<'EOF' ||
import sys, boto3
from botocore.config import Config
ak, sk, ep, b = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=ep, aws_access_key_id=ak, aws_secret_access_key=sk,
                  region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))
s3.create_bucket(Bucket=b)
s3.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
EOF
    fail "create the versioned bucket"

# --- workload and nemesis ----------------------------------------------------------------
ns_spawn client workload.log env AWS_CONFIG_FILE=/dev/null python3 "$HERE/nemesis.py" workload \
    --endpoints "$EPS" --bucket "$BUCKET" --access-key "$AK" --secret-key "$SK" \
    --log "$TM_TMP/ops.jsonl" --seconds "$SECS" --seed "$SEED"
WL=$TM_LAST_PID
FAULTS=0
cut() { # cut N: drop N's traffic with the other coordinators (both ways)
    local n=$1 o
    for o in ca cb cc; do
        [[ $o == "$n" ]] && continue
        ns_exec "$n" iptables -A INPUT -s "${COORD_LAN[$o]}" -j DROP
        ns_exec "$n" iptables -A OUTPUT -d "${COORD_LAN[$o]}" -j DROP
    done
}
heal() { ns_exec "$1" iptables -F INPUT; ns_exec "$1" iptables -F OUTPUT; }
# The order of the faults and which coordinator each hits come from the seed.
mapfile -t VICTIMS < <(python3 -c "import random; r = random.Random($SEED); print('\n'.join(r.choice(['ca','cb','cc']) for _ in range(3)))")
sleep 3
v=${VICTIMS[0]}
log "nemesis: kill -9 $v"
pid_var=PID_$v
kill -KILL "${!pid_var}" && wait "${!pid_var}" 2>/dev/null
FAULTS=$((FAULTS + 1))
sleep 3
coord_start "$v"
log "nemesis: $v restarted"
v=${VICTIMS[1]}
log "nemesis: partition $v from the other coordinators"
cut "$v"
FAULTS=$((FAULTS + 1))
sleep 5
heal "$v"
log "nemesis: healed $v"
v=${VICTIMS[2]}
pid_var=PID_$v
log "nemesis: SIGSTOP $v"
kill -STOP "${!pid_var}"
FAULTS=$((FAULTS + 1))
sleep 3
kill -CONT "${!pid_var}"
log "nemesis: SIGCONT $v"
wait "$WL" || fail "the workload failed (see workload.log)"
cat "$TM_TMP/workload.log"

# --- after the heal ----------------------------------------------------------------------
wait_for 30 "the three coordinators hold the same control state" coords_same_state || fail "control state differs"
out=$(py check --quiesce 60 $([[ $MODE == consistent ]] && echo --consistent)) && ok=1 || ok=0
printf '%s\n' "$out"
log "nemesis: seed $SEED, mode $MODE, RF $RF, faults injected $FAULTS"
((ok)) || fail "the checker found anomalies"
pass
