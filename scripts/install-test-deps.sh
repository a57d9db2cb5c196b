#!/usr/bin/env bash
# Install everything the TunnelMesh test suite needs on a Debian/Ubuntu machine.
#
# Idempotent and non-interactive: run as root (CI runs it from scripts/test.sh).
# Only packages that are missing are installed; a second run does no network I/O
# and finishes in about a second. Prints one line per action.
#
#   sudo scripts/install-test-deps.sh
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

log() { printf 'install-test-deps: %s\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root (try: sudo $0)" >&2
    exit 1
fi

# Debian packages. iperf3 is not used by the tests and therefore not listed.
APT_PACKAGES=(
    iproute2          # ip netns, veth, ip link/addr/route
    ethtool           # dataplane-offload: reads and sets the TUN device's offloads
    iputils-ping      # ping (interval 0.2 s needs root, we are)
    nftables
    iptables
    socat             # TCP transfers over the tunnel
    tcpdump           # diagnostics / packet capture
    procps            # pkill/pgrep (targeted by pid/namespace), ps
    psmisc
    coreutils         # timeout, sha256sum, head
    python3           # bad-input datagram generator, AF_PACKET capture, JSON checks
    python3-pip
    wireguard-go      # userspace WireGuard for interop tests (no kernel module here)
    wireguard-tools   # wg, wg-quick
    rclone            # S3 tests (later issues)
    libnfs-utils      # nfs-ls/nfs-cp/nfs-cat (no kernel NFS client here)
    fuse3             # fusermount3: tm-lazyfs (scripts/powerloss) mounts through it when mount(2) is refused
    rpcbind           # rpcinfo -p: the portmapper test (the rpcbind daemon is not started)
    docker.io         # Docker management tests (scripts/e2e/docker.sh starts dockerd if none runs)
    busybox-static    # the root file system of the Docker test image (docker import; no registry)
    util-linux        # script(1): a pseudo-terminal for `docker exec -it` in scripts/e2e/docker.sh
    bind9-dnsutils    # dig, for the mesh DNS tests
    faketime          # libfaketime: a coordinator with a skewed clock (scripts/e2e/nemesis.sh)
    curl              # S3 Basic/Bearer/presign tests
    ca-certificates
    g++               # libfuzzer-sys compiles libFuzzer (scripts/fuzz-smoke.sh)
)

# PyPI packages: import/command name -> package name.
PIP_PACKAGES=(awscli boto3 s3cmd cryptography)

missing_apt=()
for pkg in "${APT_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ $status != "install ok installed" ]]; then
        missing_apt+=("$pkg")
    fi
done

if ((${#missing_apt[@]})); then
    if ! command -v apt-get >/dev/null; then
        log "apt-get not found; install manually: ${missing_apt[*]}" >&2
        exit 1
    fi
    # Another apt/dpkg (unattended-upgrades, a second test run) may hold the lock: wait for it
    # up to 10 minutes instead of failing at once.
    lock=(-o DPkg::Lock::Timeout=600)
    log "apt-get update"
    apt-get "${lock[@]}" update -qq </dev/null
    log "apt-get install ${missing_apt[*]}"
    apt-get "${lock[@]}" install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing_apt[@]}" </dev/null >/dev/null
else
    log "apt packages: all ${#APT_PACKAGES[@]} present"
fi

# A Python that has pip: prefer the first python3 on PATH (may be a pyenv one).
PY=python3
if ! "$PY" -m pip --version >/dev/null 2>&1; then
    PY=/usr/bin/python3
fi

pip_present() {
    case "$1" in
    awscli) command -v aws >/dev/null 2>&1 ;;
    s3cmd) command -v s3cmd >/dev/null 2>&1 ;;
    *) "$PY" -c "import $1" >/dev/null 2>&1 ;;
    esac
}

missing_pip=()
for pkg in "${PIP_PACKAGES[@]}"; do
    pip_present "$pkg" || missing_pip+=("$pkg")
done

if ((${#missing_pip[@]})); then
    log "pip install ${missing_pip[*]} (with $PY)"
    pip_args=(-m pip install --quiet --no-input --disable-pip-version-check)
    if ! "$PY" "${pip_args[@]}" "${missing_pip[@]}" </dev/null; then
        # Debian's system Python is "externally managed" (PEP 668).
        log "retrying pip with --break-system-packages"
        "$PY" "${pip_args[@]}" --break-system-packages "${missing_pip[@]}" </dev/null
    fi
    # pyenv shims need a rehash to expose new console scripts (aws, s3cmd).
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
else
    log "pip packages: all ${#PIP_PACKAGES[@]} present"
fi

# s3s-fs 0.14: the reference S3 server the remote chunk backend is tested against.
TOOLS=${TM_TEST_TOOLS:-/opt/tm-test-tools}
if [[ -x $TOOLS/bin/s3s-fs ]]; then
    log "s3s-fs present ($TOOLS/bin/s3s-fs)"
else
    # sudo resets PATH: find the Rust toolchain of root or of the invoking user.
    if ! command -v cargo >/dev/null 2>&1; then
        for d in "$HOME/.cargo/bin" /root/.cargo/bin ${SUDO_USER:+"/home/$SUDO_USER/.cargo/bin"}; do
            [[ -x $d/cargo ]] && { PATH=$d:$PATH; break; }
        done
    fi
    log "cargo install s3s-fs@0.14.1 --features binary --root $TOOLS"
    cargo install --quiet --locked s3s-fs@0.14.1 --features binary --root "$TOOLS" </dev/null ||
        cargo install --quiet s3s-fs@0.14.1 --features binary --root "$TOOLS" </dev/null
fi

# Sanity: the kernel facilities the e2e tests rely on.
[[ -c /dev/net/tun ]] || log "warning: /dev/net/tun missing; e2e tests will fail" >&2
for cmd in ip ping socat wg wireguard-go python3 timeout sha256sum dig curl; do
    command -v "$cmd" >/dev/null 2>&1 || log "warning: $cmd still not on PATH" >&2
done
log "done"
