#!/usr/bin/env bash
# An emulated Raspberry Pi for tests/test_arm64.py: a Debian bookworm arm64 root filesystem (Python 3.11,
# as on Raspberry Pi OS bookworm) run on x86 through qemu user-mode emulation, with two virtual
# environments holding the device side's runtimes:
#   /opt/litert       ai-edge-litert 2.3.0, numpy, tokenizers, click, pytest (+ setuptools, wheel)
#   /opt/tflite-2.14  tflite-runtime 2.14.0, numpy<2, tokenizers, click, pytest
# and OpenSSH's server (/usr/sbin/sshd, never started here) for tests/test_deploy_arm64.py, which deploys
# to the emulated Pi over SSH. A complete rootfs without it (built before sshd was added) gets it added.
#
#   .ci/arm64-rootfs.sh            # prints the rootfs path on its last line
#
# Idempotent: it installs qemu-user 10 from bookworm-backports (bookworm's own qemu 7.2 shows programs
# the host's /proc/cpuinfo, and LiteRT then crashes or computes wrong results) and debootstrap,
# registers qemu-aarch64 with binfmt_misc (flags OPF), and reuses a complete rootfs (one whose marker
# file, written last, matches this recipe). Otherwise it builds one: ~700 MB, and 6 to 20 minutes (most
# of it emulated: debootstrap's second stage, update-ca-certificates, pip).
#
# EDGEBERT_ARM64_ROOTFS   where the rootfs lives (default /var/cache/edgebert/arm64-rootfs; outside the repo)
# EDGEBERT_DEBIAN_MIRROR  Debian mirror for backports and debootstrap (default http://deb.debian.org/debian)
# Needs root (re-runs itself with sudo otherwise) and network access to Debian and PyPI (or the index
# the host's pip is configured with, which is replicated into the rootfs's /etc/pip.conf).
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    exec sudo --preserve-env=EDGEBERT_ARM64_ROOTFS,EDGEBERT_DEBIAN_MIRROR,PIP_INDEX_URL,PIP_EXTRA_INDEX_URL,PIP_TRUSTED_HOST,http_proxy,https_proxy,no_proxy,HTTP_PROXY,HTTPS_PROXY,NO_PROXY "$0" "$@"
fi

ROOTFS="${EDGEBERT_ARM64_ROOTFS:-/var/cache/edgebert/arm64-rootfs}"
MIRROR="${EDGEBERT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
MARKER="$ROOTFS/.edgebert-arm64-rootfs"
QEMU=/usr/bin/qemu-aarch64
# Change RECIPE whenever what goes into the rootfs changes: a rootfs built by another recipe is rebuilt.
RECIPE="edgebert arm64 rootfs 1: debian bookworm arm64 minbase python3 python3-venv python3-pip ca-certificates;
/opt/litert: ai-edge-litert==2.3.0 numpy tokenizers click pytest setuptools>=68 wheel;
/opt/tflite-2.14: tflite-runtime==2.14.0 numpy<2 tokenizers click pytest"
LITERT_PACKAGES=("ai-edge-litert==2.3.0" numpy tokenizers click pytest "setuptools>=68" wheel)
TFLITE_PACKAGES=("tflite-runtime==2.14.0" "numpy<2" tokenizers click pytest)
CHROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

START=$SECONDS
log() { printf 'arm64-rootfs [%4ds]: %s\n' "$((SECONDS - START))" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- (a) qemu-user 10 from bookworm-backports, and debootstrap ------------------------------------------
qemu_major() { "$QEMU" --version 2>/dev/null | sed -n 's/^qemu-aarch64 version \([0-9]*\)\..*/\1/p'; }

if [ ! -x "$QEMU" ] || [ "$(qemu_major)" -lt 10 ] 2>/dev/null || [ -z "$(qemu_major)" ] || ! command -v debootstrap >/dev/null; then
    if ! grep -rqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        log "adding the bookworm-backports apt source"
        cat > /etc/apt/sources.list.d/bookworm-backports.sources <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    log "installing qemu-user (bookworm-backports) and debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -t bookworm-backports qemu-user >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        debootstrap debian-archive-keyring >/dev/null
fi
[ -n "$(qemu_major)" ] && [ "$(qemu_major)" -ge 10 ] || die "$QEMU is not qemu 10 or newer: $("$QEMU" --version | head -1)"
log "$("$QEMU" --version | head -1) at $QEMU"

# --- (b) binfmt_misc: run aarch64 ELF binaries through qemu-aarch64 ------------------------------------
# Flags: O (qemu opens the binary itself), P (keep argv[0]), F (the kernel opens qemu now, so it works
# inside a chroot that does not contain qemu).
BINFMT=/proc/sys/fs/binfmt_misc
if [ ! -e "$BINFMT/register" ]; then
    log "mounting binfmt_misc"
    mount -t binfmt_misc binfmt_misc "$BINFMT"
fi
[ "$(cat "$BINFMT/status")" = enabled ] || echo 1 > "$BINFMT/status"
AARCH64_MAGIC='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
AARCH64_MASK='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
registered_ok() {  # an enabled entry for qemu-aarch64 pointing at our qemu with flags OPF
    local entry="$BINFMT/qemu-aarch64"
    local flags
    [ -e "$entry" ] && grep -qx enabled "$entry" && grep -qx "interpreter $QEMU" "$entry" || return 1
    flags=$(sed -n 's/^flags: *//p' "$entry")
    [[ $flags == *O* && $flags == *P* && $flags == *F* ]]
}
if ! registered_ok; then
    if [ -e "$BINFMT/qemu-aarch64" ]; then
        log "replacing the existing qemu-aarch64 binfmt registration: $(tr '\n' ' ' < "$BINFMT/qemu-aarch64")"
        echo -1 > "$BINFMT/qemu-aarch64"
    fi
    log "registering $QEMU with binfmt_misc (flags OPF)"
    echo ":qemu-aarch64:M::$AARCH64_MAGIC:$AARCH64_MASK:$QEMU:OPF" > "$BINFMT/register"
fi
registered_ok || die "binfmt_misc registration of qemu-aarch64 failed: $(cat "$BINFMT/qemu-aarch64" 2>&1)"

# --- helpers for the rootfs ------------------------------------------------------------------------------
mounts_under() { awk -v root="$(realpath -m "$1")" '$2 == root || index($2, root "/") == 1 {print $2}' /proc/mounts; }

# Run a command in the rootfs with /proc, /sys and /dev mounted in a private mount namespace (they vanish
# when the command ends, whatever happens), with a clean environment: the host's PIP_* stay out.
in_rootfs() {
    # shellcheck disable=SC2016  # the inner sh expands $1, $root and the proxies; CHROOT_PATH is spliced in
    unshare --mount --propagation private -- sh -c '
        root=$1; shift
        mount -t proc proc "$root/proc" && mount -t sysfs sysfs "$root/sys" && mount --rbind /dev "$root/dev" || exit 1
        exec chroot "$root" /usr/bin/env -i PATH='"$CHROOT_PATH"' HOME=/root LANG=C.UTF-8 \
            http_proxy="${http_proxy:-}" https_proxy="${https_proxy:-}" no_proxy="${no_proxy:-}" "$@"
    ' sh "$ROOTFS" "$@"
}

# The host pip's index settings (pip config list covers pip.conf files and PIP_* variables), minus
# local file:// indexes the rootfs cannot see. The certificate bundle is the rootfs's own, which holds
# the host's CA certificates (copied below).
host_pip_config() {
    local pip_list="" key value index="" extra="" trusted="" timeout=""
    if python3 -m pip --version >/dev/null 2>&1; then
        pip_list=$(python3 -m pip config list 2>/dev/null || true)
    fi
    while IFS= read -r line; do
        key=${line%%=*}; value=${line#*=}; value=${value#\'}; value=${value%\'}
        case "$key" in
            *.index-url) index=$value ;;
            *.extra-index-url) extra="$extra $value" ;;
            *.trusted-host) trusted="$trusted $value" ;;
            *.timeout|*.default-timeout) timeout=$value ;;
        esac
    done < <(grep -v '^:env:' <<< "$pip_list"; grep '^:env:' <<< "$pip_list")  # PIP_* override the files
    echo "[global]"
    echo "cert = /etc/ssl/certs/ca-certificates.crt"
    case "$index" in http://*|https://*) echo "index-url = $index" ;; esac
    extra=$(for url in $extra; do case "$url" in http://*|https://*) printf '%s ' "$url" ;; esac; done)
    [ -n "${extra// /}" ] && echo "extra-index-url = ${extra% }"
    local -a hosts
    read -ra hosts <<< "$trusted"
    [ "${#hosts[@]}" -gt 0 ] && echo "trusted-host = ${hosts[*]}"
    [ -n "$timeout" ] && echo "timeout = $timeout"
    return 0
}

# The emulated CPU is the one QEMU_CPU names, /proc/cpuinfo included (qemu 7.2 showed the host's). The
# binfmt entry holds the qemu binary it was registered with (flag F), so this checks that one.
check_emulation() {
    local cpuinfo
    cpuinfo=$(QEMU_CPU=cortex-a76 chroot "$ROOTFS" /bin/cat /proc/cpuinfo 2>&1) || die "the rootfs does not run: $cpuinfo"
    if ! grep -q '^CPU part[[:space:]]*: 0xd0b$' <<< "$cpuinfo" || ! grep -q '^Features.* asimddp' <<< "$cpuinfo"; then
        die "QEMU_CPU=cortex-a76 does not show a Cortex-A76 in /proc/cpuinfo (an old qemu registered?): $(head -c 300 <<< "$cpuinfo")"
    fi
}

# OpenSSH's server, installed with apt-get in the rootfs (emulated, ~1 min); its service is never started
# (policy-rc.d refuses it). Also added to a complete rootfs that predates it, so no rebuild is needed.
ensure_openssh_server() {
    [ -x "$ROOTFS/usr/sbin/sshd" ] && return 0
    log "installing openssh-server into the rootfs (emulated)"
    printf '#!/bin/sh\nexit 101\n' > "$ROOTFS/usr/sbin/policy-rc.d"
    chmod 755 "$ROOTFS/usr/sbin/policy-rc.d"
    local status=0
    in_rootfs /bin/sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends openssh-server && apt-get clean' >/dev/null || status=$?
    rm -f "$ROOTFS/usr/sbin/policy-rc.d"
    [ "$status" -eq 0 ] && [ -x "$ROOTFS/usr/sbin/sshd" ] || die "installing openssh-server in the rootfs failed"
    mkdir -p "$ROOTFS/run/sshd"  # sshd's privilege-separation directory
    log "$(in_rootfs /usr/sbin/sshd -V 2>&1 | head -1) in the rootfs"
}

# --- reuse a complete rootfs -----------------------------------------------------------------------------
if [ -f "$MARKER" ] && [ "$(sed -n '1,/^$/p' "$MARKER" | sed '$d')" = "$RECIPE" ]; then
    check_emulation
    ensure_openssh_server
    log "reusing the complete rootfs at $ROOTFS (built $(sed -n 's/^built: //p' "$MARKER"))"
    echo "$ROOTFS"
    exit 0
fi

# --- (c) build the rootfs --------------------------------------------------------------------------------
if [ -e "$ROOTFS" ]; then
    [ -z "$(mounts_under "$ROOTFS")" ] || die "something is mounted under $ROOTFS: $(mounts_under "$ROOTFS" | tr '\n' ' ')"
    log "removing the incomplete or outdated rootfs at $ROOTFS"
    rm -rf --one-file-system "$ROOTFS"
fi
mkdir -p "$(dirname "$ROOTFS")"

log "debootstrap, first stage (bookworm arm64 minbase + python3) into $ROOTFS"
debootstrap --arch=arm64 --foreign --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$ROOTFS" "$MIRROR" >/dev/null
log "debootstrap, second stage (emulated)"
in_rootfs /debootstrap/debootstrap --second-stage >/dev/null
[ "$(in_rootfs /usr/bin/python3 -c 'import platform; print(platform.machine())')" = aarch64 ] \
    || die "python3 in the rootfs does not run as aarch64"
check_emulation

log "installing the host's CA certificates into the rootfs"
if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
    cp -a /usr/local/share/ca-certificates/. "$ROOTFS/usr/local/share/ca-certificates/"
fi
in_rootfs /usr/sbin/update-ca-certificates >/dev/null
cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
host_pip_config > "$ROOTFS/etc/pip.conf"
ensure_openssh_server
log "pip configuration in the rootfs: $(grep -v '^\[' "$ROOTFS/etc/pip.conf" | tr '\n' ';')"

# --- (d) the two virtual environments --------------------------------------------------------------------
make_venv() {
    local venv=$1; shift
    log "creating $venv: $*"
    in_rootfs /usr/bin/python3 -m venv "$venv"
    in_rootfs "$venv/bin/python" -m pip install --quiet --no-cache-dir --upgrade pip
    in_rootfs "$venv/bin/python" -m pip install --quiet --no-cache-dir "$@"
    in_rootfs "$venv/bin/python" -m pip freeze > "$ROOTFS$venv/freeze.txt"
    log "$venv: $(grep -iE '^(ai-edge-litert|tflite-runtime|numpy|tokenizers)==' "$ROOTFS$venv/freeze.txt" | tr '\n' ' ')"
}
make_venv /opt/litert "${LITERT_PACKAGES[@]}"
make_venv /opt/tflite-2.14 "${TFLITE_PACKAGES[@]}"

log "checking both runtimes load under emulation"
in_rootfs /opt/litert/bin/python -c 'import ai_edge_litert.interpreter, numpy, tokenizers' \
    || die "ai-edge-litert does not import in /opt/litert"
in_rootfs /opt/tflite-2.14/bin/python -c 'import tflite_runtime.interpreter, numpy, tokenizers' \
    || die "tflite-runtime does not import in /opt/tflite-2.14"

{
    echo "$RECIPE"
    echo
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((SECONDS - START)) s with $("$QEMU" --version | head -1)"
} > "$MARKER.tmp"
mv "$MARKER.tmp" "$MARKER"
log "done: $(du -sh --one-file-system "$ROOTFS" | cut -f1) at $ROOTFS"
echo "$ROOTFS"
