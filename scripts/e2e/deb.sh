#!/usr/bin/env bash
# The Debian package: scripts/dist/build-deb.sh builds it from the test binaries; `dpkg-deb -c`
# lists exactly the files install.sh installs (binaries, unit, completions, gzipped man pages,
# config, copyright); the control fields are right; `dpkg --root` installs it into an empty
# temporary root (the installed binaries run, the unit points at them, dpkg knows the config
# as a conffile), removes it (files gone, config kept) and purges it (config gone).
source "$(dirname "$0")/../lib/netns.sh"
tm_init deb 120
for b in tunnelmesh tm-dataplane tmctl; do [[ -x $TM_BIN_DIR/$b ]] || fail "$TM_BIN_DIR/$b missing"; done
command -v dpkg-deb >/dev/null || fail "dpkg-deb missing"
REPO=$(cd "$(dirname "$0")/../.." && pwd)

deb=$(TM_BIN_DIR=$TM_BIN_DIR bash "$REPO/scripts/dist/build-deb.sh" "$TM_TMP/out") || fail "build-deb.sh failed"
[[ -f $deb ]] || fail "build-deb.sh printed '$deb', which is not a file"
log "built $deb ($(stat -c %s "$deb") bytes)"
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$REPO/Cargo.toml")
assert_eq "$(basename "$deb")" "tunnelmesh_${version}_$(dpkg --print-architecture).deb" "package file name"

# Every file, and nothing else (directories aside).
want="./etc/tunnelmesh/tunnelmesh.yaml
./usr/bin/tm-dataplane
./usr/bin/tmctl
./usr/bin/tunnelmesh
./usr/lib/systemd/system/tunnelmesh.service
./usr/share/bash-completion/completions/tmctl
./usr/share/bash-completion/completions/tunnelmesh
./usr/share/doc/tunnelmesh/copyright
./usr/share/fish/vendor_completions.d/tmctl.fish
./usr/share/fish/vendor_completions.d/tunnelmesh.fish"
want+=$'\n'$(cd "$TM_TMP" && "$TM_BIN_DIR/tunnelmesh" gen man "$TM_TMP/man" >/dev/null &&
    for m in "$TM_TMP"/man/*.1; do printf './usr/share/man/man1/%s.gz\n' "$(basename "$m")"; done)
want+="
./usr/share/zsh/site-functions/_tmctl
./usr/share/zsh/site-functions/_tunnelmesh"
got=$(dpkg-deb -c "$deb" | awk '$1 !~ /^d/ {print $6}' | sort)
assert_eq "$got" "$(sort <<<"$want")" "files in the package"
dpkg-deb -c "$deb" | awk '$6 == "./usr/bin/tunnelmesh" {print $1, $2}' | grep -qx -- '-rwxr-xr-x root/root' ||
    fail "tunnelmesh is not 0755 root/root: $(dpkg-deb -c "$deb" | grep usr/bin/tunnelmesh)"

assert_eq "$(dpkg-deb -f "$deb" Package Version | tr '\n' ' ')" "Package: tunnelmesh Version: $version " "control fields"
dpkg-deb -f "$deb" Depends | grep -Eq '^libc6 \(>= 2\.[0-9]+\)' || fail "Depends: $(dpkg-deb -f "$deb" Depends)"
assert_eq "$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)" /etc/tunnelmesh/tunnelmesh.yaml "conffiles"

# Install into an empty root with dpkg itself (maintainer scripts run outside a chroot, with
# DPKG_ROOT set; the root has no libc6 package, hence --force-depends).
R=$TM_TMP/root
mkdir -p "$R/var/lib/dpkg/info" "$R/var/lib/dpkg/updates"
: >"$R/var/lib/dpkg/status"
dpkgr() { dpkg --root="$R" --force-script-chrootless --force-depends --log=/dev/null "$@"; }
run_step "dpkg --root install" dpkgr -i "$deb"
assert_eq "$(dpkg-query --admindir="$R/var/lib/dpkg" -W -f='${Status} ${Version}' tunnelmesh)" \
    "install ok installed $version" "dpkg status after install"
"$R/usr/bin/tunnelmesh" --version | grep -qx "tunnelmesh $version" || fail "installed tunnelmesh --version"
"$R/usr/bin/tmctl" --help | grep -q 'ping' || fail "installed tmctl --help lacks ping"
grep -qx 'ExecStart=/usr/bin/tunnelmesh join --config /etc/tunnelmesh/tunnelmesh.yaml' \
    "$R/usr/lib/systemd/system/tunnelmesh.service" || fail "unit ExecStart"
zcat "$R/usr/share/man/man1/tmctl.1.gz" | grep -q '^\.TH' || fail "tmctl.1.gz is not a man page"
dpkg-query --admindir="$R/var/lib/dpkg" -L tunnelmesh | grep -qx /usr/bin/tm-dataplane || fail "dpkg -L lacks tm-dataplane"
run_step "dpkg --root remove" dpkgr -r tunnelmesh
[[ ! -e $R/usr/bin/tunnelmesh ]] || fail "tunnelmesh left after remove"
[[ -f $R/etc/tunnelmesh/tunnelmesh.yaml ]] || fail "config removed by remove (a conffile stays until purge)"
run_step "dpkg --root purge" dpkgr -P tunnelmesh
[[ ! -e $R/etc/tunnelmesh/tunnelmesh.yaml ]] || fail "config left after purge"
log "ok: package built, listed, installed, removed and purged"
pass
