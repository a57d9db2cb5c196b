#!/usr/bin/env bash
# Install TunnelMesh: tunnelmesh, tm-dataplane and tmctl on PATH, the systemd unit, shell
# completions (bash, zsh, fish) and man pages.
#
#   scripts/install.sh                       # as root: into /usr/local and /etc/systemd/system
#   DESTDIR=/tmp/pkg PREFIX=/usr scripts/install.sh   # staged (packaging, tests): nothing else touched
#
# Binaries come from TM_BIN_DIR (default target/release; built with `cargo build --release`
# when missing). Then: put a config in /etc/tunnelmesh/tunnelmesh.yaml (a coordinator's is
# installed there if none exists) and `systemctl enable --now tunnelmesh`.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
BIN_SRC=${TM_BIN_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/release}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
CONF_DIR=${CONF_DIR:-/etc/tunnelmesh}
BINS=(tunnelmesh tm-dataplane tmctl)

log() { printf 'install: %s\n' "$*"; }
die() { printf 'install: %s\n' "$*" >&2; exit 1; }

missing=0
for b in "${BINS[@]}"; do [[ -x $BIN_SRC/$b ]] || missing=1; done
if ((missing)); then
    command -v cargo >/dev/null || die "binaries missing in $BIN_SRC and no cargo to build them"
    log "building (cargo build --release)"
    (cd "$REPO" && cargo build --release --quiet -p tunnelmesh -p tm-dataplane -p tmctl)
    BIN_SRC=${CARGO_TARGET_DIR:-$REPO/target}/release
fi
if [[ -z $DESTDIR && $(id -u) -ne 0 ]]; then
    die "run as root to install into $PREFIX (or set DESTDIR for a staged install)"
fi

bindir=$DESTDIR$PREFIX/bin
install -d "$bindir"
for b in "${BINS[@]}"; do
    install -m 0755 "$BIN_SRC/$b" "$bindir/$b"
done
log "binaries: $bindir/{$(IFS=,; echo "${BINS[*]}")}"

tm=$bindir/tunnelmesh
share=$DESTDIR$PREFIX/share
install -d "$share/bash-completion/completions" "$share/zsh/site-functions" \
    "$share/fish/vendor_completions.d" "$share/man/man1"
for bin in tunnelmesh tmctl; do
    "$tm" gen completions bash --bin "$bin" >"$share/bash-completion/completions/$bin"
    "$tm" gen completions zsh --bin "$bin" >"$share/zsh/site-functions/_$bin"
    "$tm" gen completions fish --bin "$bin" >"$share/fish/vendor_completions.d/$bin.fish"
done
"$tm" gen man "$share/man/man1"
log "completions and man pages: $share"

install -d "$DESTDIR$UNIT_DIR"
sed "s|@BINDIR@|$PREFIX/bin|g" "$REPO/scripts/dist/tunnelmesh.service" \
    >"$DESTDIR$UNIT_DIR/tunnelmesh.service"
chmod 0644 "$DESTDIR$UNIT_DIR/tunnelmesh.service"
log "systemd unit: $DESTDIR$UNIT_DIR/tunnelmesh.service"

install -d -m 0755 "$DESTDIR$CONF_DIR"
if [[ ! -e $DESTDIR$CONF_DIR/tunnelmesh.yaml ]]; then
    install -m 0644 "$REPO/examples/coordinator.yaml" "$DESTDIR$CONF_DIR/tunnelmesh.yaml"
    log "config: $DESTDIR$CONF_DIR/tunnelmesh.yaml (a coordinator; edit before starting)"
fi

if [[ -z $DESTDIR ]] && [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    systemctl daemon-reload
    log "next: systemctl enable --now tunnelmesh"
fi
log "done"
