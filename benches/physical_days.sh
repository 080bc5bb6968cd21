#!/usr/bin/env bash
# Physical base backups, side by side with pgBackRest, in one run.
#
# One throwaway PostgreSQL 15 cluster (data checksums on) holds FootDash at SCALE
# (default 900: about 2 GB of data directory) and archives its WAL into both tools
# (archive_command runs pgvault wal-push, then pgbackrest archive-push). Each of DAYS
# days applies a day of FootDash traffic (tests/data/footdash-day.sql) and takes one
# base backup with each tool, in alternating order:
#   pgvault    backup --base --pgdata DIR --jobs JOBS
#   pgBackRest backup --type=full on day 1, --type=incr after; process-max=JOBS,
#              zstd level 3 (its default), aes-256-cbc; pgvault always encrypts and
#              uses its defaults: zstd 2 for chunks in full, 3 for deltas
# Before each backup the WAL archive is brought up to date (pg_backup_stop waits for
# it). Reported per day: wall time, peak RSS (GNU time), bytes the backup added (pgvault:
# the backup's bytes_stored_new; pgBackRest: growth of its backup/ directory), and
# what pgvault took unread from the day before (bytes_referenced).
# Then, after a marker row written after the last backup, RUNS times each, interleaved:
#   full    restore of the last backup into an empty directory (files only)
#   delta   restore of the last backup over a copy of the day before's restore
#           (pgvault --delta; pgbackrest --delta)
#   pitr    restore to a time between two marker rows, server started and timed until
#           it is promoted; the restored rows are checked (marker and table counts)
# Not run in CI. Usage:
#   SCALE=900 DAYS=7 JOBS=2 RUNS=3 [OUT=benches/results/physical_days.md] benches/physical_days.sh
#   SCALE=20 DAYS=2 RUNS=1 benches/physical_days.sh     # a quick smoke run
#   COLD_ROWS=4000000 ...   # adds a cold history table (about 500 MB) no day touches
set -euo pipefail
SCALE=${SCALE:-900}
DAYS=${DAYS:-7}
# Rows of a cold history table that no day's traffic touches (0: none). Both tools
# skip unchanged files (pgBackRest's incremental; pgvault's skip-by-reference), and
# FootDash's own tables all change every day, so this is what shows that skipping.
COLD_ROWS=${COLD_ROWS:-0}
JOBS=${JOBS:-2}
RUNS=${RUNS:-3}
OUT=${OUT:-}
FIRST_DAY=2026-11-01
# shellcheck source=benches/mount_setup.sh
. "$(dirname "$0")/mount_setup.sh"
if ! command -v pgbackrest >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbackrest >/dev/null
fi
[ -x /usr/bin/time ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q time >/dev/null

pgdata=$work/pg/data
echo "bench passphrase" >"$work/pass"
cat >"$work/pgbr.conf" <<CONF
[global]
repo1-path=$work/pgbr
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=bench passphrase
compress-type=zst
compress-level=3
log-level-console=warn
log-level-file=off
lock-path=$work/pgbr-lock
process-max=$JOBS
start-fast=y
repo1-retention-full=99

[bench]
pg1-path=$pgdata
pg1-port=$port
pg1-socket-path=$work/pg
CONF
export PGVAULT_PASSWORD_FILE=$work/pass
unset PGVAULT_PASSWORD
BR="pgbackrest --config=$work/pgbr.conf --stanza=bench"
PV="$PGVAULT"
# Everything runs as the server's user, as on a database host.
run() { as_pg "PGVAULT_REPO=$PGVAULT_REPO PGVAULT_PASSWORD_FILE=$PGVAULT_PASSWORD_FILE PGVAULT_CACHE_DIR=$PGVAULT_CACHE_DIR PGVAULT_PG_BINDIR=$PG_BIN_DIR PGHOST=$PGHOST PGPORT=$PGPORT PGUSER=postgres $*"; }
mb() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1e6}'; }
du_b() { du -sb "$1" 2>/dev/null | cut -f1; }

echo "== setup: PostgreSQL (checksums on), FootDash SCALE=$SCALE, pgvault and pgBackRest archiving"
mkdir -p "$work/pg" "$mnt" "$work/cache"
[ "$(id -u)" = 0 ] && chown -R postgres "$work"
as_pg "$PG_BIN_DIR/initdb -D $pgdata -A trust -U postgres --no-sync --locale=C -E UTF8 --data-checksums" >/dev/null
cat >>"$pgdata/postgresql.conf" <<CONF
port = $port
unix_socket_directories = '$work/pg'
listen_addresses = ''
wal_level = replica
archive_mode = on
archive_command = 'PGVAULT_REPO=$PGVAULT_REPO PGVAULT_PASSWORD_FILE=$work/pass PGVAULT_CACHE_DIR=$work/cache $PV wal-push %p && $BR archive-push %p'
max_wal_size = 4GB
fsync = off
CONF
as_pg "$PG_BIN_DIR/pg_ctl -D $pgdata -l $work/pg/log -w start" >/dev/null
pg_started=1
run "$PV init --kdf-memory-kib 8192 --kdf-iterations 1" >/dev/null
run "$BR stanza-create" >/dev/null
t0=$(now)
load_footdash "$SCALE" >/dev/null
if [ "$COLD_ROWS" -gt 0 ]; then
    psql -d footdash -c "CREATE TABLE history_cold WITH (autovacuum_enabled = false) AS
        SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS note,
               timestamptz '2020-01-01' + g * interval '1 minute' AS at
        FROM generate_series(1, $COLD_ROWS) g" >/dev/null
    psql -d footdash -c "VACUUM (FREEZE, ANALYZE) history_cold" >/dev/null
fi
psql -d postgres -c CHECKPOINT >/dev/null
# The data directory without pg_wal, which neither tool backs up.
data_mb() { mb "$(( $(du_b "$pgdata") - $(du_b "$pgdata/pg_wal") ))"; }
echo "loaded in $(awk -v s="$t0" -v e="$(now)" 'BEGIN {printf "%.0f", e - s}') s; data directory $(data_mb) MB"

# Switches to a new WAL segment and waits until the archiver has pushed it (and so
# everything before it) into both tools: pg_backup_stop waits for the archive, so a
# backlog left by the load or a day's traffic would be billed to whichever tool ran
# first.
wait_archived() {
    local seg tries=0
    seg=$(psql -At -d postgres -c "SELECT pg_walfile_name(pg_current_wal_lsn())")
    psql -At -d postgres -c "SELECT pg_switch_wal()" >/dev/null
    until [ "$(psql -At -d postgres -c "SELECT coalesce(last_archived_wal, '') >= '$seg' FROM pg_stat_archiver")" = t ]; do
        sleep 0.2
        tries=$((tries + 1))
        # A switch right after another is a no-op that can leave the segment being
        # written unfinished (seen once here): ask again every few seconds.
        if [ $((tries % 25)) = 0 ]; then
            psql -At -d postgres -c "SELECT pg_switch_wal()" >/dev/null
        fi
    done
}

declare -A t
record() { t[$1]="${t[$1]:-} $2"; }
m() { printf '%s\n' ${t[$1]} | median; }
ratio() { awk -v a="$(m "$1")" -v b="$(m "$2")" 'BEGIN {printf "%.2fx", a / b}'; }
# timed_rss CMD...: runs as the server's user, prints "seconds peak_rss_kib".
timed_rss() {
    run "/usr/bin/time -f '%e %M' -o $work/time.out $*" >/dev/null
    cat "$work/time.out" | tail -1
}

rows=""
pv_total=0
br_total=0
declare -a pv_ids br_labels
for d in $(seq 1 "$DAYS"); do
    date=$(date -u -d "$FIRST_DAY + $((d - 1)) days" +%F)
    [ "$d" -gt 1 ] && footdash_day "$d" "$date"
    type=incr
    [ "$d" = 1 ] && type=full
    br_before=$(du_b "$work/pgbr/backup")
    order="pv br"
    [ $((d % 2)) = 0 ] && order="br pv"
    for tool in $order; do
        wait_archived
        if [ "$tool" = pv ]; then
            read -r pv_s pv_rss < <(timed_rss "$PV backup --base --pgdata $pgdata --jobs $JOBS --json --lock-wait 1s > $work/pv.json")
            pv_json=$(cat "$work/pv.json")
            pv_new=$(echo "$pv_json" | jq -r .bytes_stored_new)
            pv_ref=$(echo "$pv_json" | jq -r '.bytes_referenced // 0')
            pv_ids+=("$(echo "$pv_json" | jq -r .snapshot_id)")
            [ "$(echo "$pv_json" | jq '.bad_pages | length')" = 0 ] || { echo "pgvault reported bad pages: $pv_json" >&2; exit 1; }
        else
            read -r br_s br_rss < <(timed_rss "$BR backup --type=$type")
            br_labels+=("$(run "$BR info --output=json" | jq -r '.[0].backup[-1].label')")
        fi
    done
    br_new=$(( $(du_b "$work/pgbr/backup") - br_before ))
    pv_total=$((pv_total + pv_new))
    br_total=$((br_total + br_new))
    record pv_backup "$pv_s"
    record br_backup "$br_s"
    record pv_rss "$pv_rss"
    record br_rss "$br_rss"
    rows="$rows| $d | $(data_mb) | $pv_s | $br_s | $(mb "$pv_ref") | $(mb "$pv_new") | $(mb "$br_new") | $((pv_rss / 1024)) | $((br_rss / 1024)) |
"
    echo "day $d: pgvault ${pv_s}s +$(mb "$pv_new") MB, pgBackRest ($type) ${br_s}s +$(mb "$br_new") MB"
done

psql -d footdash -c "CREATE TABLE IF NOT EXISTS marks (tag text); INSERT INTO marks VALUES ('before')" >/dev/null
sleep 1
target=$(psql -At -d postgres -c "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
sleep 1
psql -d footdash -c "INSERT INTO marks VALUES ('after')" >/dev/null
psql -d postgres -c "SELECT pg_switch_wal()" >/dev/null
sleep 3
source_counts=$(table_counts footdash)

last_pv=${pv_ids[-1]}
prev_pv=${pv_ids[-2]:-${pv_ids[-1]}}
prev_br=${br_labels[-2]:-${br_labels[-1]}}
dest=$work/restore
fresh() { rm -rf "$dest"; mkdir -p "$dest"; chmod 700 "$dest"; [ "$(id -u)" = 0 ] && chown postgres "$dest"; return 0; }
# The day before's copy, restored by each tool itself, for its delta restore.
run "$PV restore --pgdata $work/yesterday_pv --latest --base $prev_pv --jobs $JOBS" >/dev/null 2>&1
run "$BR restore --pg1-path=$work/yesterday_br --set=$prev_br --type=default" >/dev/null
# start_promoted DIR: starts a restored directory on another port, waits until it
# has promoted, checks the marker rows and table counts, and stops it.
pitr_port=$((port + 1))
start_promoted() {
    cat >>"$1/postgresql.auto.conf" <<CONF
port = $pitr_port
archive_mode = off
CONF
    as_pg "$PG_BIN_DIR/pg_ctl -D $1 -l $work/pitr.log -w start" >/dev/null
    until [ "$(PGPORT=$pitr_port psql -At -d postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do sleep 0.05; done
}
check_stop() {
    local marks got
    marks=$(PGPORT=$pitr_port psql -At -d footdash -c "SELECT string_agg(tag, ',') FROM marks")
    got=$(PGPORT=$pitr_port table_counts footdash)
    as_pg "$PG_BIN_DIR/pg_ctl -D $1 -m fast -w stop" >/dev/null
    [ "$marks" = before ] || { echo "$2: restored marks '$marks', expected 'before'" >&2; exit 1; }
    [ "${got// marks=1/}" = "${source_counts// marks=2/}" ] || { echo "$2: restored counts $got, source $source_counts" >&2; exit 1; }
}
for r in $(seq 1 "$RUNS"); do
    order="pv br"
    [ $((r % 2)) = 0 ] && order="br pv"
    for tool in $order; do
        fresh
        if [ "$tool" = pv ]; then
            record pv_full "$(timed run "$PV restore --pgdata $dest --latest --base $last_pv --jobs $JOBS")"
            fresh; cp -a "$work/yesterday_pv/." "$dest/"
            record pv_delta "$(timed run "$PV restore --pgdata $dest --latest --base $last_pv --jobs $JOBS --delta")"
            fresh
            s=$(now)
            run "$PV restore --pgdata $dest --target-time '$target' --jobs $JOBS" >/dev/null 2>&1
            start_promoted "$dest"
            record pv_pitr "$(awk -v s="$s" -v e="$(now)" 'BEGIN {printf "%.4f", e - s}')"
            check_stop "$dest" pgvault
        else
            record br_full "$(timed run "$BR restore --pg1-path=$dest --type=default")"
            fresh; cp -a "$work/yesterday_br/." "$dest/"
            record br_delta "$(timed run "$BR restore --pg1-path=$dest --delta --type=default")"
            fresh
            s=$(now)
            run "$BR restore --pg1-path=$dest --type=time '--target=$target' --target-action=promote" >/dev/null
            start_promoted "$dest"
            record br_pitr "$(awk -v s="$s" -v e="$(now)" 'BEGIN {printf "%.4f", e - s}')"
            check_stop "$dest" pgBackRest
        fi
    done
done
rm -rf "$dest"

out=$(cat <<EOF
# Physical base backups: $DAYS days of FootDash, pgvault beside pgBackRest

pgvault $("$PGVAULT" --version | awk '{print $NF}'), $(pgbackrest version), SCALE=$SCALE, COLD_ROWS=$COLD_ROWS, JOBS=$JOBS, RUNS=$RUNS; $(nproc) CPUs ($(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1)).
Both encrypt and compress with zstd at their defaults (pgBackRest level 3; pgvault level 2 for chunks in full, 3 for deltas); MB = 10^6 bytes; times in seconds.
pgvault: \`backup --base --pgdata --jobs $JOBS\`; pgBackRest: full on day 1, incremental after, process-max=$JOBS.

## Per day

| day | PGDATA MB (no pg_wal) | pgvault s | pgBackRest s | pgvault unread MB | pgvault added MB | pgBackRest added MB | pgvault RSS MiB | pgBackRest RSS MiB |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|
$rows| **total** | | | | | **$(mb "$pv_total")** | **$(mb "$br_total")** | | |

Stored over the week, pgvault against pgBackRest: $(awk -v a="$pv_total" -v b="$br_total" 'BEGIN {printf "%.4fx", a / b}') (goal at most 0.25x).
Backup time, medians over the days: pgvault $(m pv_backup), pgBackRest $(m br_backup): $(ratio pv_backup br_backup) (goal at most 1.0x).

## Restores of the last backup, medians of $RUNS runs

| what | pgvault | pgBackRest | ratio |
|---|---:|---:|---:|
| full restore into an empty directory (files only) | $(m pv_full) | $(m br_full) | $(ratio pv_full br_full) |
| delta restore over the day before's copy | $(m pv_delta) | $(m br_delta) | $(ratio pv_delta br_delta) |
| PITR to a marker, restore + recovery until promoted | $(m pv_pitr) | $(m br_pitr) | $(ratio pv_pitr br_pitr) |

Delta against full: pgvault $(ratio pv_delta pv_full) (goal at most 0.3x), pgBackRest $(ratio br_delta br_full).
Repository totals at the end (WAL included): pgvault $(mb "$(du_b "$PGVAULT_REPO")") MB, pgBackRest $(mb "$(du_b "$work/pgbr")") MB.
EOF
)
echo "$out"
[ -z "$OUT" ] || echo "$out" >"$OUT"
