#!/usr/bin/env bash
# Benchmark for gzipped SQL dumps (issue "The runbook's own dumps"): daily FootDash
# dumps taken as the runbook's cron line takes them (`pg_dump | gzip`, GNU gzip at
# -6), stored by pgvault, side by side in one run with the same days taken with
# `pg_dump -Fc -Z0` into a second pgvault repository and with restic on the `.sql.gz`
# files. Not run in CI.
#
#   benches/gzip_days.sh                         # builds target/release/pgvault if needed
#   SCALE=300 DAYS=7 RUNS=3 benches/gzip_days.sh # the issue's size (~450 MB of SQL a day)
#   SCALE=5 DAYS=2 RUNS=1 benches/gzip_days.sh   # a quick smoke run
#
# Environment:
#   SCALE  FootDash scale (default 100)   DAYS  daily dumps (default 7)
#   RUNS   timed runs, medians reported (default 3)
#   PGVAULT_BIN  the binary to measure    OUT  also write the Markdown report there
#   PG_BIN_DIR   PostgreSQL 15 binaries (default /usr/lib/postgresql/15/bin)
#
# What it measures. Day 1 is freshly loaded FootDash data; each later day applies
# tests/data/footdash-day.sql and VACUUM ANALYZE. Each day is dumped once as
# `pg_dump | gzip -6` and once with -Fc -Z0, to files; the .sql.gz file is backed up
# into pgvault repository "gz" and into restic (`restic backup --stdin`), the -Z0
# file into pgvault repository "z0":
#   - stored bytes per day and in total: the growth of each repository directory;
#   - on the last day, RUNS times, medians: `pg_dump | gzip > file` against
#     `pg_dump | gzip | pgvault backup --stdin`; `pgvault cat` against `cat` of the
#     file; `gunzip | psql` into an empty database from a fresh mount against the
#     local file; peak RSS of the backup (GNU time).
# Before timing, `pgvault cat` and the mounted file of the last snapshot must equal
# the file, and every restore must give the source's row counts. MB = 10^6 bytes.
#
# Goals (the issue's, for -Fc): stored within 1.2x of the -Z0 days; the pipe no
# slower than without pgvault; a restore from the mount at most 1.5x the file's.
set -euo pipefail

SCALE=${SCALE:-100}
DAYS=${DAYS:-7}
RUNS=${RUNS:-3}
OUT=${OUT:-}
FIRST_DAY=2026-11-01
BUILD_ARGS="--no-default-features --bin pgvault"
command -v restic >/dev/null || { echo "gzip_days: restic is missing: apt-get install restic" >&2; exit 1; }
command -v jq >/dev/null || { echo "gzip_days: jq is missing: apt-get install jq" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "gzip_days: GNU time is missing: apt-get install time" >&2; exit 1; }
# shellcheck source=benches/mount_setup.sh
. "$(dirname "$0")/mount_setup.sh"

mb() { awk -v b="$1" 'BEGIN {printf "%.2f", b / 1e6}'; }
size_of() { du -sb "$1" | cut -f1; }
gz_repo=$work/repo-gz
z0_repo=$work/repo-z0
export RESTIC_REPOSITORY=$work/restic RESTIC_PASSWORD=bench
vault() { local repo=$1; shift; PGVAULT_REPO=$repo "$PGVAULT" "$@"; }

echo "== setup: PostgreSQL cluster, FootDash (SCALE=$SCALE), two pgvault repositories, restic"
start_cluster
load_footdash "$SCALE"
for r in "$gz_repo" "$z0_repo"; do vault "$r" init --kdf-memory-kib 8192 --kdf-iterations 1 >/dev/null; done
restic init --quiet >/dev/null

rows=""
declare -A total
for d in $(seq 1 "$DAYS"); do
    date=$(date -u -d "$FIRST_DAY + $((d - 1)) days" +%F)
    [ "$d" -gt 1 ] && footdash_day "$d" "$date"
    gz=$work/footdash.sql.gz
    z0=$work/z0.dump
    "$PG_BIN_DIR/pg_dump" footdash | gzip -6 >"$gz"
    "$PG_BIN_DIR/pg_dump" -Fc -Z0 -f "$z0" footdash
    line="| $d | $(mb "$(stat -c %s "$gz")") | $(mb "$(stat -c %s "$z0")")"
    for kind in gz z0 restic; do
        case $kind in
            gz) dir=$gz_repo ;;
            z0) dir=$z0_repo ;;
            restic) dir=$RESTIC_REPOSITORY ;;
        esac
        before=$(size_of "$dir")
        case $kind in
            gz) vault "$gz_repo" backup --stdin --db footdash --time "${date}T02:00:00Z" --json <"$gz" >"$work/gz.json" ;;
            z0) vault "$z0_repo" backup --stdin --db footdash --time "${date}T02:00:00Z" >/dev/null <"$z0" ;;
            restic) restic backup --quiet --stdin --stdin-filename footdash.sql.gz <"$gz" >/dev/null ;;
        esac
        grown=$(($(size_of "$dir") - before))
        total[$kind]=$((${total[$kind]:-0} + grown))
        line="$line | $(mb "$grown")"
    done
    kept=$(jq '.recreated.bytes_kept_compressed // 0' "$work/gz.json")
    rows="$rows$line | $(mb "$kept") |"$'\n'
    echo "== day $d ($date): $line"
done
gz_id=$(jq -r .snapshot_id "$work/gz.json")

echo "== checks: the last snapshot through cat and the mount"
vault "$gz_repo" cat "$gz_id" | cmp - "$gz" || { echo "pgvault cat differs from the .sql.gz file" >&2; exit 1; }
export PGVAULT_REPO=$gz_repo
mount_fresh
cmp "$mnt/snapshots/$gz_id/footdash.sql.gz" "$gz" || { echo "the mounted file differs" >&2; exit 1; }
unmount
source_counts=$(table_counts footdash)
restore() { # restore <file.sql.gz>
    psql -d postgres -c "DROP DATABASE IF EXISTS scratch" -c "CREATE DATABASE scratch"
    gunzip -c "$1" | psql -X -q -v ON_ERROR_STOP=1 -d scratch
}

declare -A t
record() { t[$1]="${t[$1]:-} $2"; }
for r in $(seq "$RUNS"); do
    record dump "$(timed sh -c "'$PG_BIN_DIR/pg_dump' footdash | gzip -6 > '$work/again.sql.gz'")"
    /usr/bin/time -f %M -o "$work/rss" "$PGVAULT" backup --stdin --db footdash <"$gz" >/dev/null
    record rss "$(cat "$work/rss")"
    record pipe "$(timed sh -c "'$PG_BIN_DIR/pg_dump' footdash | gzip -6 | '$PGVAULT' backup --stdin --db footdash")"
    record cat_file "$(timed cat "$gz")"
    record cat_vault "$(timed "$PGVAULT" cat "$gz_id")"
    record restore_file "$(timed restore "$gz")"
    [ "$(table_counts scratch)" = "$source_counts" ] || { echo "the restore of the file gave other counts" >&2; exit 1; }
    mount_fresh; ls "$mnt/snapshots/$gz_id" >/dev/null
    record restore_mount "$(timed restore "$mnt/snapshots/$gz_id/footdash.sql.gz")"
    unmount
    [ "$(table_counts scratch)" = "$source_counts" ] || { echo "the restore from the mount gave other counts" >&2; exit 1; }
    echo "   run $r done"
done
m() { printf '%s\n' ${t[$1]} | median; }
ratio() { awk -v a="$(m "$1")" -v b="$(m "$2")" 'BEGIN {printf "%.2fx", a / b}'; }

out=$(cat <<EOF
# Gzipped SQL dumps: $DAYS daily FootDash dumps (pg_dump | gzip -6), side by side

pgvault $("$PGVAULT" --version | awk '{print $NF}'), restic $(restic version | awk '{print $2}'), $(gzip --version | head -1), SCALE=$SCALE, RUNS=$RUNS; $(nproc) CPUs ($(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1)).
Stored = growth of the repository directory (\`du -sb\`); MB = 10^6 bytes.

## Stored per day

| day | .sql.gz MB | -Z0 MB | pgvault .sql.gz stored MB | pgvault -Z0 stored MB | restic .sql.gz stored MB | kept as it came MB |
|---:|---:|---:|---:|---:|---:|---:|
$rows| **total** | | | **$(mb "${total[gz]}")** | **$(mb "${total[z0]}")** | **$(mb "${total[restic]}")** | |

pgvault .sql.gz against pgvault -Z0: $(awk -v a="${total[gz]}" -v b="${total[z0]}" 'BEGIN {printf "%.2fx", a / b}') (goal at most 1.2x); against restic on the same files: $(awk -v a="${total[gz]}" -v b="${total[restic]}" 'BEGIN {printf "%.2fx", a / b}').

## Last day, medians of $RUNS runs, seconds

| what | pgvault | reference | ratio | goal |
|---|---:|---:|---:|---:|
| \`pg_dump \| gzip \| pgvault backup --stdin\` vs \`pg_dump \| gzip > file\` | $(m pipe) | $(m dump) | $(ratio pipe dump) | 1.0x |
| \`pgvault cat\` vs \`cat file\` | $(m cat_vault) | $(m cat_file) | $(ratio cat_vault cat_file) | |
| \`gunzip \| psql\` whole, from a fresh mount vs the file | $(m restore_mount) | $(m restore_file) | $(ratio restore_mount restore_file) | 1.5x |

Peak RSS of \`pgvault backup --stdin\` of the .sql.gz file: $(m rss) KiB.
EOF
)
echo "$out"
[ -z "$OUT" ] || echo "$out" >"$OUT"
