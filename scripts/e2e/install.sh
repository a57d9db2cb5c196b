#!/usr/bin/env bash
# scripts/install.sh into a staged DESTDIR/PREFIX: binaries, unit, completions and man pages are
# where they belong; the completion scripts parse (bash -n; zsh -n and fish -n when present);
# `man -l` renders the pages when man is present; nothing outside DESTDIR is written.
source "$(dirname "$0")/../lib/netns.sh"
tm_init install 120
require_bins() { local b; for b in tunnelmesh tm-dataplane tmctl; do [[ -x $TM_BIN_DIR/$b ]] || fail "$TM_BIN_DIR/$b missing"; done; }
require_bins
REPO=$(cd "$(dirname "$0")/../.." && pwd)
D=$TM_TMP/dest
run_step "install.sh into DESTDIR" \
    env DESTDIR="$D" PREFIX=/usr TM_BIN_DIR="$TM_BIN_DIR" bash "$REPO/scripts/install.sh"
for f in usr/bin/tunnelmesh usr/bin/tm-dataplane usr/bin/tmctl; do
    [[ -x $D/$f ]] || fail "$f not installed executable"
done
U=$D/etc/systemd/system/tunnelmesh.service
[[ -f $U ]] || fail "no unit"
grep -qx 'ExecStart=/usr/bin/tunnelmesh join --config /etc/tunnelmesh/tunnelmesh.yaml' "$U" || fail "ExecStart: $(grep ExecStart "$U")"
grep -qx 'Restart=on-failure' "$U" || fail "unit lacks Restart=on-failure"
grep -q '^AmbientCapabilities=.*CAP_NET_ADMIN' "$U" || fail "unit lacks CAP_NET_ADMIN"
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify "$U" 2>&1 | grep -v "not executable\|No such file" | grep -i "error" && fail "systemd-analyze verify"
fi
[[ -f $D/etc/tunnelmesh/tunnelmesh.yaml ]] || fail "no config installed"
"$D/usr/bin/tunnelmesh" up --config /nonexistent.yaml 2>/dev/null && fail "bad config accepted"
for bin in tunnelmesh tmctl; do
    b=$D/usr/share/bash-completion/completions/$bin
    z=$D/usr/share/zsh/site-functions/_$bin
    f=$D/usr/share/fish/vendor_completions.d/$bin.fish
    for x in "$b" "$z" "$f"; do [[ -s $x ]] || fail "completion $x missing or empty"; done
    bash -n "$b" || fail "bash completion for $bin does not parse"
    grep -q "complete .*$bin" "$b" || fail "bash completion for $bin registers nothing"
    command -v zsh >/dev/null && { zsh -n "$z" || fail "zsh completion for $bin does not parse"; }
    command -v fish >/dev/null && { fish -n "$f" || fail "fish completion for $bin does not parse"; }
    m=$D/usr/share/man/man1/$bin.1
    [[ -s $m ]] || fail "man page $bin.1 missing"
    if command -v man >/dev/null; then
        out=$(MANWIDTH=80 man -l "$m" 2>&1 | col -b 2>/dev/null || MANWIDTH=80 man -l "$m" 2>&1)
        grep -q "^NAME" <<<"$out" || fail "man -l $bin.1 renders no NAME section: $(head -5 <<<"$out")"
        [[ $bin == tmctl ]] && { grep -q "peers" <<<"$out" || fail "tmctl.1 does not list peers"; }
    fi
done
# Bash completion works: completing `tmctl pe` offers peers.
out=$(bash -c "source '$D/usr/share/bash-completion/completions/tmctl'; COMP_WORDS=(tmctl pe); COMP_CWORD=1; COMP_LINE='tmctl pe'; COMP_POINT=8; _tmctl tmctl pe tmctl; printf '%s\n' \"\${COMPREPLY[@]}\"" 2>&1)
grep -qx peers <<<"$out" || fail "bash completion of 'tmctl pe' gave: $out"
log "ok: install.sh staged install; completions parse, man pages render"
pass
