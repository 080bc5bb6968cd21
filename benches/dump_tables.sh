#!/usr/bin/env bash
# Benchmark for a dump's tables in the mount (issue "Inside every dump"): the question
# "what did this row look like then?" answered by grep on the mounted table file,
# side by side with the only route a peer offers, a `pg_restore -t` into a scratch
# database and a query, in one run, reporting medians. Not run in CI.
#
#   benches/dump_tables.sh                      # builds target/release/pgvault if needed
#   SCALE=340 RUNS=5 benches/dump_tables.sh     # the issue's ~500 MB FootDash dump
#   PGVAULT_BIN=/tmp/pgvault OUT=tables.md benches/dump_tables.sh
#
# Environment:
#   SCALE  FootDash scale (default 100: ~1.5 MB of dump per unit, so ~150 MB)
#   RUNS   runs per measurement, medians reported (default 5)
#   WHOLE  0: skip the whole-dump restores (the longest part; default 1)
#   PGVAULT_BIN  the binary to measure   OUT  also write the Markdown report there
#   PG_BIN_DIR   PostgreSQL 15 binaries (default /usr/lib/postgresql/15/bin)
#
# What it measures, for the smallest and the largest FootDash table with rows, each
# RUNS times, for one row in the middle of the table (found by its id):
#   - grep through the mount, cold: a fresh mount whose list of backup points is
#     loaded (`ls` of the backup point, as on a mount that has run for a while) but
#     no data read (empty chunk cache, nothing in the page cache for the file), `grep -c` of the row's line over the whole
#     `tables/public.<t>.copy` (the whole table is read, not just up to the row);
#   - the same, warm: a second grep on the same mount;
#   - the scratch route: a fresh database, `pg_restore -t <t> -d scratch` from the
#     mounted dump (fresh mount), then `SELECT … WHERE id = …`.
# And the whole dump, RUNS times into a fresh database, from the mount: `psql -f
# footdash.sql` (the script pgvault makes) against `pg_restore -d` of footdash.dump.
# Before timing, the mounted table file must equal `COPY public.<t> TO STDOUT`, both
# routes must find the same row, and both whole restores must give the source's row
# counts. Goal: the grep at least 10x faster (cold).
#
# Needs fuse3 and root or a user allowed to mount with fusermount3. As root, the
# server runs as the postgres OS user. Everything lives in a temp dir removed at the end.
set -euo pipefail

SCALE=${SCALE:-100}
RUNS=${RUNS:-5}
BUILD_ARGS="--no-default-features --bin pgvault"
# shellcheck source=benches/mount_setup.sh
. "$(dirname "$0")/mount_setup.sh"

echo "== setup: PostgreSQL cluster, FootDash (SCALE=$SCALE), repository, backup"
start_cluster
load_footdash "$SCALE"
"$PGVAULT" init --kdf-memory-kib 8192 --kdf-iterations 1 >/dev/null
id=$("$PGVAULT" backup --db footdash --json | sed -n 's/.*"snapshot_id": "\([0-9a-f]*\)".*/\1/p')
dump_mb=$("$PGVAULT" snapshots --json | sed -n 's/.*"size_bytes": \([0-9]*\).*/\1/p' | tail -1 | awk '{printf "%.1f", $1 / 1e6}')
tables=$(psql -At -d footdash -c "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE nspname = 'public' AND relkind = 'r' AND reltuples > 0 ORDER BY pg_relation_size(c.oid)" | sed -n '1p;$p')
rel="snapshots/$id"
echo "   dump: $dump_mb MB, snapshot ${id:0:8}; tables: $(echo $tables); $RUNS runs each"

declare -A t
record() { t[$1]="${t[$1]:-} $2"; }

scratch_query() {
    local table=$1 row=$2
    psql -d postgres -c "DROP DATABASE IF EXISTS scratch" -c "CREATE DATABASE scratch"
    "$PG_BIN_DIR/pg_restore" -t "$table" -d scratch "$mnt/$rel/footdash.dump"
    psql -At -d scratch -c "SELECT * FROM public.$table WHERE id = $row"
}

report=""
for table in $tables; do
    file="$mnt/$rel/tables/public.$table.copy"
    rows=$(psql -At -d footdash -c "SELECT count(*) FROM public.$table")
    row=$(psql -At -d footdash -c "SELECT id FROM public.$table ORDER BY id OFFSET $((rows / 2)) LIMIT 1")
    mount_fresh
    psql -d footdash -c "COPY public.$table TO STDOUT" | cmp -s - "$file" \
        || { echo "tables/public.$table.copy differs from COPY's output!" >&2; exit 1; }
    [ "$(grep -c "^$row	" "$file")" = 1 ] || { echo "row $row of $table not found once" >&2; exit 1; }
    found=$(scratch_query "$table" "$row" | tr '|' '\t' | cut -f1)
    [ "$found" = "$row" ] || { echo "the scratch route did not find row $row of $table" >&2; exit 1; }
    unmount
    copy_mb=$(psql -At -d footdash -c "COPY public.$table TO STDOUT" | wc -c | awk '{printf "%.1f", $1 / 1e6}')
    echo "== $table: $rows rows, $copy_mb MB of COPY text, row id $row"
    for r in $(seq "$RUNS"); do
        # A mount runs for days: its list of backup points is loaded, the data not.
        mount_fresh; ls "$mnt/$rel" >/dev/null
        record "$table.grep_cold" "$(timed grep -c "^$row	" "$file")"
        record "$table.grep_warm" "$(timed grep -c "^$row	" "$file")"
        unmount
        mount_fresh; ls "$mnt/$rel" >/dev/null
        record "$table.scratch" "$(timed scratch_query "$table" "$row")"
        unmount
        echo "   run $r done"
    done
    m() { printf '%s\n' ${t[$table.$1]} | median; }
    line=$(awk -v c="$(m grep_cold)" -v w="$(m grep_warm)" -v s="$(m scratch)" -v name="$table" \
        -v rows="$rows" -v mb="$copy_mb" \
        'BEGIN {printf "| %s | %d | %s | %.3f | %.3f | %.3f | %.1fx |", name, rows, mb, c, w, s, s / c}')
    report="$report$line"$'\n'
done

whole() {
    psql -d postgres -c "DROP DATABASE IF EXISTS whole" -c "CREATE DATABASE whole"
    if [ "$1" = psql ]; then
        psql -d whole -f "$mnt/$rel/footdash.sql" >/dev/null
    else
        "$PG_BIN_DIR/pg_restore" -d whole "$mnt/$rel/footdash.dump"
    fi
}
source_counts=$(table_counts footdash)
[ "${WHOLE:-1}" = 0 ] || echo "== the whole dump"
for r in $(seq "$RUNS"); do
    [ "${WHOLE:-1}" = 0 ] && break
    for route in psql pg_restore; do
        mount_fresh; ls "$mnt/$rel" >/dev/null
        record "whole.$route" "$(timed whole "$route")"
        unmount
        [ "$(table_counts whole)" = "$source_counts" ] || { echo "$route gave other row counts" >&2; exit 1; }
    done
    echo "   run $r done"
done
mw() { printf '%s\n' ${t[whole.$1]:-0} | median; }
whole_line=$(awk -v p="$(mw psql)" -v r="$(mw pg_restore)" 'BEGIN {if (r > 0) printf "| %.2f | %.2f | %.2fx |", p, r, p / r; else print "| (not run: WHOLE=0) | | |"}')

out=$(cat <<EOF
One row of a table from a $dump_mb MB FootDash dump (pg_dump -Fc -Z0, SCALE=$SCALE), medians of $RUNS runs, seconds.
grep: \`grep -c '^<id>\t' tables/public.<t>.copy\` through the mount (cold: fresh mount). scratch: \`pg_restore -t <t> -d scratch\` from the mounted dump (fresh mount) and a query.

| table | rows | COPY MB | grep cold | grep warm | scratch | scratch / grep cold |
| --- | --- | --- | --- | --- | --- | --- |
$report
Goal: the grep at least 10x faster than the scratch route (cold).

The whole dump into a fresh database from the mount (fresh mount), seconds:

| psql -f footdash.sql | pg_restore -d footdash.dump | psql / pg_restore |
| --- | --- | --- |
$whole_line
EOF
)
echo
echo "$out"
if [ -n "${OUT:-}" ]; then echo "$out" >"$OUT"; fi
