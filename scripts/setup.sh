#!/usr/bin/env bash
# Idempotent machine setup for chainwatch (Debian/Ubuntu, as root): distro packages, kernel headers
# for bcc, tracefs, and the .venv. Quick when there is nothing to do.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (it installs packages and mounts tracefs)"; exit 1
fi

kernel=$(uname -r)
arch=$(dpkg --print-architecture)
# bcc comes from the distro: the PyPI package called "bcc" is an unrelated project.
packages=(python3-bpfcc python3-venv python3-yaml bpftool iproute2 kmod gcc make)
# Tools the live tests use as attacks (in network namespaces only) and as benign workloads.
packages+=(netcat-traditional ncat socat gawk openssl curl wget git)
# The stdio-graph live tests: OpenBSD nc relays, busybox applets, telnet pairs, PHP and Tcl command loops, a
# private sshd (started by the test, in its own namespace, with its own config), script and tmux.
packages+=(netcat-openbsd busybox telnet php-cli tcl tmux bsdutils openssh-server openssh-client)
# Supply-chain live tests: real npm, pip (a C extension needs Python.h) and dpkg-deb installs.
packages+=(python3-dev)
# Packaging tests (tests/live/test_package.py): build the .deb and .rpm, lintian, verify the unit, install the
# .deb with dpkg -i (its compiled dependencies must already be there), `vagrant validate` the kernel matrix.
packages+=(dpkg-dev rpm lintian systemd python3-psutil python3-msgpack vagrant)
# The journald output's live test runs a private systemd-journald and reads it back with journalctl.
packages+=(systemd util-linux)
# NodeSource's nodejs ships its own npm and conflicts with Debian's npm package: add it only if missing.
command -v npm >/dev/null 2>&1 || packages+=(npm)

headers_pkg=""
apt_updated=0
apt_update() { [ "$apt_updated" = 1 ] || { log "apt-get update"; apt-get update -qq; apt_updated=1; }; }

if [ ! -e "/lib/modules/$kernel/build/include" ]; then
    apt_update
    # The exact headers if the distro has them, else its nearest (bcc then needs the build/source links).
    if apt-cache show "linux-headers-$kernel" >/dev/null 2>&1; then
        headers_pkg="linux-headers-$kernel"
    else
        headers_pkg="linux-headers-$arch"
    fi
    packages+=("$headers_pkg")
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt_update
    log "installing ${missing[*]}"
    # Never start a service on the build machine (openssh-server would start the host's sshd): a
    # policy-rc.d that refuses every start, for this install only, unless the machine already has one.
    own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; own_policy=1
    fi
    rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
    [ "$own_policy" = 0 ] || rm -f /usr/sbin/policy-rc.d
    [ "$rc" = 0 ] || { log "apt-get install failed ($rc)"; exit "$rc"; }
fi

# `crontab -` in the persistence live tests: only Debian's crontab binary, unpacked from the cron package
# into .cache (installing cron would start a cron daemon on the build machine).
if [ ! -x .cache/cron/usr/bin/crontab ]; then
    apt_update
    log "unpacking crontab from Debian's cron package into .cache/cron"
    tmp=$(mktemp -d)
    mkdir -p .cache/cron
    (cd "$tmp" && apt-get download -qq cron 2>/dev/null) && dpkg-deb -x "$tmp"/cron_*.deb .cache/cron
    rm -rf "$tmp"
fi

if [ ! -e "/lib/modules/$kernel/build/include" ]; then
    # No headers for this exact kernel: link the newest installed ones. Struct offsets come from BTF,
    # so the headers only need to compile bcc's helpers.
    hdr=$(ls -d /usr/src/linux-headers-*-"$arch" 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$hdr" ]; then
        log "no kernel headers found under /usr/src after installing $headers_pkg"; exit 1
    fi
    common=${hdr%-"$arch"}-common
    mkdir -p "/lib/modules/$kernel"
    ln -sfn "$hdr" "/lib/modules/$kernel/build"
    ln -sfn "$( [ -d "$common" ] && echo "$common" || echo "$hdr")" "/lib/modules/$kernel/source"
    log "linked /lib/modules/$kernel/{build,source} to $hdr (nearest headers; offsets come from BTF)"
fi

if ! mountpoint -q /sys/kernel/tracing; then
    log "mounting tracefs at /sys/kernel/tracing"
    mount -t tracefs nodev /sys/kernel/tracing
fi

# The venv comes from the system interpreter so it sees the distro's bcc bindings.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
    log "creating .venv from /usr/bin/python3 with system site-packages"
    rm -rf .venv
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.chainwatch-installed
# Reinstall when pyproject changed, or when a test dependency is missing (a venv made before it was added,
# whose stamp a checkout did not make older than pyproject.toml).
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
    || ! .venv/bin/python -c 'import hypothesis, pytest, jsonschema, ocsf_json_schema, sigma' 2>/dev/null; then
    log "installing chainwatch and its Python dependencies into .venv"
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
    touch "$stamp"
fi
.venv/bin/python -c 'import bcc, psutil, pyroute2, structlog, msgpack, yaml, sigma' \
    || { log ".venv cannot import its dependencies"; exit 1; }
log "ready"
