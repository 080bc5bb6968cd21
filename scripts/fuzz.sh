#!/usr/bin/env bash
# Runs every libFuzzer target of fuzz/ for SECONDS each (default 60) with cargo-fuzz
# on the stable toolchain: `--sanitizer none` needs no nightly (the address
# sanitizer does, and pgvault forbids unsafe code anyway). New inputs go to a scratch
# directory, so the committed corpora (fuzz/corpus/<target>/) change only when
# someone copies in what is worth keeping; a crash fails the script and leaves the
# input under fuzz/artifacts/<target>/.
#   ./scripts/fuzz.sh          60 s per target
#   ./scripts/fuzz.sh 600      ten minutes each
#   ./scripts/fuzz.sh 30 keep  and merge what grew coverage into the corpora
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=${1:-60}
KEEP=${2:-}

command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz --version 0.13.2
cargo fuzz build --sanitizer none

failed=()
for t in $(cargo fuzz list); do
    scratch=$(mktemp -d)
    echo "== $t: ${SECONDS_EACH}s"
    if ! cargo fuzz run --sanitizer none "$t" "$scratch" "corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1; then
        failed+=("$t")
    fi
    if [ "$KEEP" = keep ]; then
        # Keep the smallest set of inputs that covers what the old and new ones do.
        cp -n "$scratch"/* "corpus/$t/" 2>/dev/null || true
        cargo fuzz cmin --sanitizer none "$t" "corpus/$t" >/dev/null 2>&1 || true
    fi
    rm -rf "$scratch"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashes in ${failed[*]}; inputs under fuzz/artifacts/" >&2
    exit 1
fi
echo "fuzz: no crash in $(cargo fuzz list | wc -l) targets"
