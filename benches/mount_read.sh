#!/usr/bin/env bash
# Benchmark of reads through `pgvault mount`, side by side with `pgvault cat` and a
# local copy of the same dump, in one run, reporting medians. Not run in CI.
#
#   benches/mount_read.sh                 # builds target/release/pgvault if needed
#   SCALE=4 RUNS=7 benches/mount_read.sh  # a bigger dump (~150 MB per SCALE), more runs
#
# What it measures, each RUNS times:
#   1. a sequential read (cat > /dev/null) of the dump
#      - through the mount, cold: a fresh mount each run (empty chunk cache, no page cache)
#      - through the mount, warm: the same file again (kernel page cache)
#      - `pgvault cat` of the snapshot
#      - a local copy, cold (its pages dropped with dd iflag=nocache) and warm
#   2. `pg_restore -t <largest table> -d <fresh db>` from the mount (fresh mount each
#      run) and from the local copy (pages dropped)
# Goal (issue 4): the mount reads at least half as fast as the local copy, and the
# single-table restore takes at most 1.5x the local time.
#
# Needs PostgreSQL 15 (PG_BIN_DIR, default /usr/lib/postgresql/15/bin), fuse3, and
# root or a user allowed to mount with fusermount3. As root, the server runs as the
# postgres OS user. Everything lives in a temp dir that is removed at the end.
set -euo pipefail

SCALE=${SCALE:-2}
RUNS=${RUNS:-5}
# shellcheck source=benches/mount_setup.sh
. "$(dirname "$0")/mount_setup.sh"
drop_pages() { dd if="$1" iflag=nocache count=0 status=none; }

echo "== setup: PostgreSQL cluster, data (SCALE=$SCALE), repository, backup"
start_cluster
psql -d postgres -c "CREATE DATABASE bench"
psql -d bench <<SQL
CREATE TABLE users AS
  SELECT g AS id, 'user' || g || '@example.com' AS email, md5(g::text) AS name,
         jsonb_build_object('lang', 'en', 'n', g, 'h', md5('h' || g)) AS settings,
         timestamptz '2024-01-01' + g * interval '1 second' AS created_at
  FROM generate_series(1, 400000 * $SCALE) g;
ALTER TABLE users ADD PRIMARY KEY (id);
CREATE TABLE events AS
  SELECT g AS id, g % (400000 * $SCALE) + 1 AS user_id, g % 97 AS kind, md5('e' || g) AS detail
  FROM generate_series(1, 600000 * $SCALE) g;
CREATE TABLE notifications AS
  SELECT g AS id, g % (400000 * $SCALE) + 1 AS user_id,
         jsonb_build_object('title', 'Goal', 'body', md5('n' || g) || md5('m' || g)) AS payload
  FROM generate_series(1, 300000 * $SCALE) g;
CREATE INDEX ON events (user_id);
SQL
largest=$(psql -At -d bench -c "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE nspname = 'public' AND relkind = 'r' ORDER BY pg_total_relation_size(c.oid) DESC LIMIT 1")
"$PGVAULT" init --kdf-memory-kib 8192 --kdf-iterations 1 >/dev/null
id=$("$PGVAULT" backup --db bench --json | sed -n 's/.*"snapshot_id": "\([0-9a-f]*\)".*/\1/p')
"$PGVAULT" cat "$id" >"$work/local.dump"
size=$(stat -c %s "$work/local.dump")
mb=$(awk -v s="$size" 'BEGIN {printf "%.1f", s / 1e6}')
rel="snapshots/$id/bench.dump"
echo "   dump: $mb MB, snapshot ${id:0:8}, largest table: $largest, $RUNS runs each"

declare -A t
record() { t[$1]="${t[$1]:-} $2"; }

echo "== sequential reads"
for r in $(seq "$RUNS"); do
    mount_fresh
    cmp -s "$mnt/$rel" "$work/local.dump" || { echo "mounted bytes differ!" >&2; exit 1; }
    unmount; mount_fresh
    record mount_cold "$(timed cat "$mnt/$rel")"
    record mount_warm "$(timed cat "$mnt/$rel")"
    unmount
    record cat "$(timed "$PGVAULT" cat "$id")"
    drop_pages "$work/local.dump"
    record local_cold "$(timed cat "$work/local.dump")"
    record local_warm "$(timed cat "$work/local.dump")"
    echo "   run $r done"
done

restore() {
    psql -d postgres -c "DROP DATABASE IF EXISTS target" -c "CREATE DATABASE target"
    "$PG_BIN_DIR/pg_restore" -t "$largest" -d target "$1"
}
echo "== pg_restore -t $largest"
for r in $(seq "$RUNS"); do
    mount_fresh
    record restore_mount "$(timed restore "$mnt/$rel")"
    unmount
    drop_pages "$work/local.dump"
    record restore_local "$(timed restore "$work/local.dump")"
    echo "   run $r done"
done

m() { printf '%s\n' ${t[$1]} | median; }
rate() { awk -v s="$size" -v d="$1" 'BEGIN {printf "%8.0f MB/s", s / 1e6 / d}'; }
echo
echo "Sequential read of a $mb MB dump, median of $RUNS:"
for k in mount_cold mount_warm cat local_cold local_warm; do
    d=$(m $k)
    printf '  %-26s %8.3f s %s\n' "$k" "$d" "$(rate "$d")"
done
echo "pg_restore -t $largest, median of $RUNS:"
for k in restore_mount restore_local; do
    printf '  %-26s %8.3f s\n' "$k" "$(m $k)"
done
awk -v mc="$(m mount_cold)" -v lc="$(m local_cold)" -v lw="$(m local_warm)" \
    -v rm="$(m restore_mount)" -v rl="$(m restore_local)" 'BEGIN {
    printf "Mount (cold) speed vs local copy: %.2fx of cold, %.2fx of warm (goal >= 0.5)\n", lc / mc, lw / mc
    printf "Single-table restore, mount vs local: %.2fx the local time (goal <= 1.5)\n", rm / rl
}'
