#!/usr/bin/env bash
# Benchmark for compressed dumps (issue "The runbook's own dumps"): a week of daily
# FootDash dumps taken as the runbook takes them (`pg_dump -Fc`, zlib at the default
# level), stored by pgvault, side by side in one run with the same days taken with
# `-Z0` into a second pgvault repository and with restic on the `-Fc` files. Not run
# in CI.
#
#   benches/compressed_days.sh                    # builds target/release/pgvault if needed
#   SCALE=300 DAYS=7 RUNS=3 benches/compressed_days.sh   # the issue's ~100 MB -Fc dumps
#   SCALE=5 DAYS=2 RUNS=1 benches/compressed_days.sh     # a quick smoke run
#
# Environment:
#   SCALE  FootDash scale (default 100: about 0.33 MB of -Fc dump per unit)
#   DAYS   daily dumps (default 7)     RUNS   timed runs, medians reported (default 3)
#   PGVAULT_BIN  the binary to measure   OUT  also write the Markdown report there
#   PG_BIN_DIR   PostgreSQL 15 binaries (default /usr/lib/postgresql/15/bin)
#
# What it measures. Day 1 is freshly loaded FootDash data; each later day applies
# tests/data/footdash-day.sql (a day of traffic) and VACUUM ANALYZE. Each day is
# dumped once with -Fc and once with -Z0, to files; the -Fc file is backed up into
# pgvault repository "fc" and into a restic repository (`restic backup --stdin`), the
# -Z0 file into pgvault repository "z0" (`backup --stdin --time <day>`):
#   - stored bytes per day and in total: the growth of each repository directory
#     (`du -sb`), everything it holds;
#   - on the last day, RUNS times, medians: `pg_dump -Fc > file` against
#     `pg_dump -Fc | pgvault backup --stdin`; `pgvault cat` of the -Fc snapshot
#     against `cat` of the file; `pg_restore -d` of the whole dump from a fresh mount
#     whose list of backup points is loaded (an `ls` of the backup point first, as on
#     a mount that has run a while; no data read) against the local file;
#     `pg_restore -t` of the smallest table with rows, the same way; peak RSS of the
#     backup (GNU time).
# Before timing, `pgvault cat` and the mounted file of the last -Fc snapshot must equal
# the -Fc file, and every restore must give the source's row counts. MB = 10^6 bytes.
#
# Goals: the -Fc days stored in at most 1.2x the bytes of the -Z0 days; the pipe no
# slower than pg_dump alone; a whole pg_restore from the mount at most 1.5x the local
# file's time, `pg_restore -t` of the smallest table at most 2x.
set -euo pipefail

SCALE=${SCALE:-100}
DAYS=${DAYS:-7}
RUNS=${RUNS:-3}
OUT=${OUT:-}
FIRST_DAY=2026-11-01
BUILD_ARGS="--no-default-features --bin pgvault"
command -v restic >/dev/null || { echo "compressed_days: restic is missing: apt-get install restic" >&2; exit 1; }
command -v jq >/dev/null || { echo "compressed_days: jq is missing: apt-get install jq" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "compressed_days: GNU time is missing: apt-get install time" >&2; exit 1; }
# shellcheck source=benches/mount_setup.sh
. "$(dirname "$0")/mount_setup.sh"

mb() { awk -v b="$1" 'BEGIN {printf "%.2f", b / 1e6}'; }
size_of() { du -sb "$1" | cut -f1; }
fc_repo=$work/repo-fc
z0_repo=$work/repo-z0
export RESTIC_REPOSITORY=$work/restic RESTIC_PASSWORD=bench
vault() { local repo=$1; shift; PGVAULT_REPO=$repo "$PGVAULT" "$@"; }

echo "== setup: PostgreSQL cluster, FootDash (SCALE=$SCALE), two pgvault repositories, restic"
start_cluster
load_footdash "$SCALE"
for r in "$fc_repo" "$z0_repo"; do vault "$r" init --kdf-memory-kib 8192 --kdf-iterations 1 >/dev/null; done
restic init --quiet >/dev/null

rows=""
declare -A total
for d in $(seq 1 "$DAYS"); do
    date=$(date -u -d "$FIRST_DAY + $((d - 1)) days" +%F)
    [ "$d" -gt 1 ] && footdash_day "$d" "$date"
    fc=$work/fc.dump
    z0=$work/z0.dump
    "$PG_BIN_DIR/pg_dump" -Fc -f "$fc" footdash
    "$PG_BIN_DIR/pg_dump" -Fc -Z0 -f "$z0" footdash
    line="| $d | $(mb "$(stat -c %s "$fc")") | $(mb "$(stat -c %s "$z0")")"
    for kind in fc z0 restic; do
        case $kind in
            fc) dir=$fc_repo ;;
            z0) dir=$z0_repo ;;
            restic) dir=$RESTIC_REPOSITORY ;;
        esac
        before=$(size_of "$dir")
        case $kind in
            fc) vault "$fc_repo" backup --stdin --db footdash --time "${date}T02:00:00Z" --json <"$fc" >"$work/fc.json" ;;
            z0) vault "$z0_repo" backup --stdin --db footdash --time "${date}T02:00:00Z" >/dev/null <"$z0" ;;
            restic) restic backup --quiet --stdin --stdin-filename footdash.dump <"$fc" >/dev/null ;;
        esac
        grown=$(($(size_of "$dir") - before))
        total[$kind]=$((${total[$kind]:-0} + grown))
        line="$line | $(mb "$grown")"
    done
    kept=$(jq '.recreated.bytes_kept_compressed' "$work/fc.json")
    rows="$rows$line | $kept |"$'\n'
    echo "== day $d ($date): $line"
done
fc_id=$(jq -r .snapshot_id "$work/fc.json")

echo "== checks: the last -Fc snapshot through cat and the mount"
vault "$fc_repo" cat "$fc_id" | cmp - "$fc" || { echo "pgvault cat differs from the -Fc file" >&2; exit 1; }
export PGVAULT_REPO=$fc_repo
mount_fresh
cmp "$mnt/snapshots/$fc_id/footdash.dump" "$fc" || { echo "the mounted dump differs" >&2; exit 1; }
unmount
smallest=$(psql -At -d footdash -c "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE nspname = 'public' AND relkind = 'r' AND reltuples > 0 ORDER BY pg_relation_size(c.oid) LIMIT 1")
source_counts=$(table_counts footdash)
restore() { # restore <file> [table]
    psql -d postgres -c "DROP DATABASE IF EXISTS scratch" -c "CREATE DATABASE scratch"
    if [ -n "${2:-}" ]; then
        "$PG_BIN_DIR/pg_restore" -d scratch -t "$2" "$1"
    else
        "$PG_BIN_DIR/pg_restore" -d scratch "$1"
    fi
}

declare -A t
record() { t[$1]="${t[$1]:-} $2"; }
for r in $(seq "$RUNS"); do
    record dump "$(timed sh -c "'$PG_BIN_DIR/pg_dump' -Fc footdash > '$work/again.dump'")"
    /usr/bin/time -f %M -o "$work/rss" "$PGVAULT" backup --stdin --db footdash <"$fc" >/dev/null
    record rss "$(cat "$work/rss")"
    record pipe "$(timed sh -c "'$PG_BIN_DIR/pg_dump' -Fc footdash | '$PGVAULT' backup --stdin --db footdash")"
    record cat_file "$(timed cat "$fc")"
    record cat_vault "$(timed "$PGVAULT" cat "$fc_id")"
    record restore_file "$(timed restore "$fc")"
    [ "$(table_counts scratch)" = "$source_counts" ] || { echo "pg_restore of the file gave other counts" >&2; exit 1; }
    mount_fresh; ls "$mnt/snapshots/$fc_id" >/dev/null
    record restore_mount "$(timed restore "$mnt/snapshots/$fc_id/footdash.dump")"
    unmount
    [ "$(table_counts scratch)" = "$source_counts" ] || { echo "pg_restore from the mount gave other counts" >&2; exit 1; }
    record table_file "$(timed restore "$fc" "$smallest")"
    mount_fresh; ls "$mnt/snapshots/$fc_id" >/dev/null
    record table_mount "$(timed restore "$mnt/snapshots/$fc_id/footdash.dump" "$smallest")"
    unmount
    echo "   run $r done"
done
m() { printf '%s\n' ${t[$1]} | median; }
ratio() { awk -v a="$(m "$1")" -v b="$(m "$2")" 'BEGIN {printf "%.2fx", a / b}'; }

out=$(cat <<EOF
# Compressed dumps: $DAYS daily FootDash dumps (pg_dump -Fc), side by side

pgvault $("$PGVAULT" --version | awk '{print $NF}'), restic $(restic version | awk '{print $2}'), SCALE=$SCALE, RUNS=$RUNS; $(nproc) CPUs ($(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1)).
Stored = growth of the repository directory (\`du -sb\`); MB = 10^6 bytes.

## Stored per day

| day | -Fc MB | -Z0 MB | pgvault -Fc stored MB | pgvault -Z0 stored MB | restic -Fc stored MB | -Fc bytes kept compressed |
|---:|---:|---:|---:|---:|---:|---:|
$rows| **total** | | | **$(mb "${total[fc]}")** | **$(mb "${total[z0]}")** | **$(mb "${total[restic]}")** | |

pgvault -Fc against pgvault -Z0: $(awk -v a="${total[fc]}" -v b="${total[z0]}" 'BEGIN {printf "%.2fx", a / b}') (goal at most 1.2x); against restic on the same -Fc files: $(awk -v a="${total[fc]}" -v b="${total[restic]}" 'BEGIN {printf "%.2fx", a / b}').

## Last day, medians of $RUNS runs, seconds

| what | pgvault | reference | ratio | goal |
|---|---:|---:|---:|---:|
| \`pg_dump -Fc \| pgvault backup --stdin\` vs \`pg_dump -Fc > file\` | $(m pipe) | $(m dump) | $(ratio pipe dump) | 1.0x |
| \`pgvault cat\` vs \`cat file\` | $(m cat_vault) | $(m cat_file) | $(ratio cat_vault cat_file) | |
| \`pg_restore -d\` whole, from a fresh mount vs the file | $(m restore_mount) | $(m restore_file) | $(ratio restore_mount restore_file) | 1.5x |
| \`pg_restore -t $smallest\`, from a fresh mount vs the file | $(m table_mount) | $(m table_file) | $(ratio table_mount table_file) | 2x |

Peak RSS of \`pgvault backup --stdin\` of the -Fc dump: $(m rss) KiB.
EOF
)
echo "$out"
[ -z "$OUT" ] || echo "$out" >"$OUT"
