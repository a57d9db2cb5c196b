#!/usr/bin/env bash
# `tunnelmesh genkey` / `tunnelmesh pubkey` agree with `wg genkey` / `wg pubkey`:
#   - tunnelmesh genkey: 32 bytes of base64 (44 chars), clamped like a Curve25519 secret,
#     different every time;
#   - for keys from either generator, tunnelmesh pubkey == wg pubkey;
#   - tunnelmesh pubkey rejects garbage with exit != 0.
source "$(dirname "$0")/../lib/netns.sh"
source "$(dirname "$0")/../lib/node.sh"
tm_init genkey 60
require_tm_binaries
require_wg

check_clamped() { # base64 key -> ok if clamped as X25519 requires
    python3 -c '
import base64, sys
k = base64.b64decode(sys.argv[1], validate=True)
assert len(k) == 32, len(k)
assert k[0] & 7 == 0 and k[31] & 0x80 == 0 and k[31] & 0x40, k.hex()
' "$1"
}

declare -A seen=()
for i in 1 2 3 4 5; do
    k=$("$TM_BIN" genkey) || fail "tunnelmesh genkey exit $?"
    [[ ${#k} -eq 44 && $k =~ ^[A-Za-z0-9+/]{43}=$ ]] || fail "genkey output is not a 44-char base64 key: '$k'"
    check_clamped "$k" || fail "genkey output $k is not a clamped X25519 secret"
    [[ -z ${seen[$k]:-} ]] || fail "genkey returned the same key twice: $k"
    seen[$k]=1
    ours=$("$TM_BIN" pubkey <<<"$k") || fail "tunnelmesh pubkey exit $?"
    theirs=$(wg pubkey <<<"$k") || fail "wg pubkey rejected tunnelmesh's key $k"
    assert_eq "$ours" "$theirs" "pubkey of tunnelmesh genkey #$i"
done

for i in 1 2 3 4 5; do
    k=$(wg genkey)
    ours=$("$TM_BIN" pubkey <<<"$k") || fail "tunnelmesh pubkey rejected wg's key $k"
    assert_eq "$ours" "$(wg pubkey <<<"$k")" "pubkey of wg genkey #$i"
done

# Without a trailing newline, as a file.
k=$(wg genkey)
printf '%s' "$k" >"$TM_TMP/k"
assert_eq "$("$TM_BIN" pubkey <"$TM_TMP/k")" "$(wg pubkey <<<"$k")" "pubkey of a key without newline"

for bad in "" "not-base64!" "$(head -c 16 /dev/urandom | base64)"; do
    if "$TM_BIN" pubkey <<<"$bad" >/dev/null 2>&1; then
        fail "tunnelmesh pubkey accepted invalid input '$bad'"
    fi
done
log "ok: pubkey rejects empty, non-base64 and 16-byte input"
pass
