#!/usr/bin/env bash
# Does the archiver keep up? Runs pgbench against a throwaway PostgreSQL 15 whose
# archive_command is `pgvault wal-push %p`, then reports, side by side in one run:
#   - WAL generated vs archived (segments/s), and the backlog of .ready files
#     sampled every second (the archiver falls behind when it grows);
#   - the latency of one wal-push of a real segment (median of N), next to
#     `cp` of the same segment to a local directory (the archive_command floor).
# Not run in CI. Usage: benches/wal_push.sh [seconds of pgbench] [pushes]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-60}
PUSHES=${2:-15}
PGBIN=${PG_BIN_DIR:-/usr/lib/postgresql/15/bin}
# PGVAULT_BENCH_PROFILE=dev measures the (slower) debug build: a conservative bound.
PROFILE=${PGVAULT_BENCH_PROFILE:-release}
cargo build --profile "$PROFILE" --quiet
PGVAULT=$PWD/target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")/pgvault

WORK=$(mktemp -d /tmp/pgvault-walbench.XXXXXX)
chmod 755 "$WORK"
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() { as_pg "$PGBIN/pg_ctl" -D "$WORK/pgdata" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/pgdata" "$WORK/sock"
echo "bench passphrase" > "$WORK/pass"
[ "$(id -u)" -eq 0 ] && chown -R postgres "$WORK"
export PGVAULT_REPO=$WORK/repo PGVAULT_PASSWORD_FILE=$WORK/pass PGVAULT_CACHE_DIR=$WORK/cache
as_pg env PGVAULT_REPO="$PGVAULT_REPO" PGVAULT_PASSWORD_FILE="$PGVAULT_PASSWORD_FILE" "$PGVAULT" init >/dev/null
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg "$PGBIN/initdb" -D "$WORK/pgdata" -A trust -U postgres --no-sync >/dev/null
cat >> "$WORK/pgdata/postgresql.conf" <<CONF
port = $PORT
unix_socket_directories = '$WORK/sock'
listen_addresses = ''
wal_level = replica
archive_mode = on
archive_command = 'PGVAULT_REPO=$PGVAULT_REPO PGVAULT_PASSWORD_FILE=$PGVAULT_PASSWORD_FILE PGVAULT_CACHE_DIR=$PGVAULT_CACHE_DIR $PGVAULT wal-push %p'
max_wal_size = 4GB
CONF
as_pg "$PGBIN/pg_ctl" -D "$WORK/pgdata" -l "$WORK/pg.log" -w start >/dev/null
export PGHOST=$WORK/sock PGPORT=$PORT PGUSER=postgres
"$PGBIN/pgbench" -q -i -s 20 postgres >/dev/null 2>&1
psql_() { "$PGBIN/psql" -X -At -d postgres -c "$1"; }
start_lsn=$(psql_ "SELECT pg_current_wal_lsn()")
start_archived=$(psql_ "SELECT archived_count FROM pg_stat_archiver")
"$PGBIN/pgbench" -c 4 -j 2 -T "$DURATION" -n postgres > "$WORK/pgbench.out" 2>&1 &
bench=$!
max_ready=0
while kill -0 $bench 2>/dev/null; do
    ready=$(ls "$WORK/pgdata/pg_wal/archive_status" 2>/dev/null | grep -c '\.ready$' || true)
    [ "$ready" -gt "$max_ready" ] && max_ready=$ready
    sleep 1
done
end_lsn=$(psql_ "SELECT pg_current_wal_lsn()")
generated=$(psql_ "SELECT round(pg_wal_lsn_diff('$end_lsn', '$start_lsn') / 16777216.0, 1)")
archived=$(( $(psql_ "SELECT archived_count FROM pg_stat_archiver") - start_archived ))
failed=$(psql_ "SELECT failed_count FROM pg_stat_archiver")
tps=$(grep -o 'tps = [0-9.]*' "$WORK/pgbench.out" | head -1)
echo "pgbench ${DURATION}s ($tps): WAL generated $generated segments ($(awk "BEGIN {printf \"%.2f\", $generated / $DURATION}") segments/s)"
echo "archived during the run: $archived segments; largest .ready backlog: $max_ready; archive failures: $failed"

seg=$(ls "$WORK/pgdata/pg_wal" | grep -E '^[0-9A-F]{24}$' | head -1)
mkdir -p "$WORK/latency" "$WORK/cpdest"
times_push=(); times_cp=()
for i in $(seq "$PUSHES"); do
    name=$(printf '0000000900000000%08X' "$i")
    cp "$WORK/pgdata/pg_wal/$seg" "$WORK/latency/$name"
    t0=$(date +%s.%N); "$PGVAULT" wal-push "$WORK/latency/$name"; t1=$(date +%s.%N)
    cp "$WORK/latency/$name" "$WORK/cpdest/$name"; sync "$WORK/cpdest/$name"; t2=$(date +%s.%N)
    times_push+=("$(awk "BEGIN {print $t1 - $t0}")"); times_cp+=("$(awk "BEGIN {print $t2 - $t1}")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
mp=$(median "${times_push[@]}"); mc=$(median "${times_cp[@]}")
echo "one push of a 16 MiB segment, median of $PUSHES: wal-push ${mp}s, cp+sync ${mc}s; wal-push sustains $(awk "BEGIN {printf \"%.1f\", 1 / $mp}") segments/s"
