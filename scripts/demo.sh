#!/usr/bin/env bash
# The main job on the embedded default, end to end: a throwaway PostgreSQL 15 with
# sample FootDash data, a local-directory repository, two daily dumps backed up with
# deduplication, the history mounted read-only, and pg_restore reading a backup
# straight from the mount into a new database whose row counts are compared with
# the source. Everything lives in one temp directory that is removed at the end.
#   ./scripts/demo.sh            scale 20 (~30 MB dump)
#   FOOTDASH_SCALE=300 ./scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=${FOOTDASH_SCALE:-20}
PGBIN=${PG_BIN_DIR:-/usr/lib/postgresql/15/bin}
# PostgreSQL 15 and fuse3, installed when missing (as the test script does).
./scripts/install-deps.sh demo

cargo build --quiet
PGVAULT=$PWD/target/debug/pgvault

WORK=$(mktemp -d /tmp/pgvault-demo.XXXXXX)
chmod 755 "$WORK"
MNT=$WORK/mnt
mount_pid=
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
    set +e
    # SIGTERM is how a mount is stopped: it unmounts and exits.
    [ -n "$mount_pid" ] && kill "$mount_pid" 2>/dev/null && wait "$mount_pid" 2>/dev/null
    if mountpoint -q "$MNT" 2>/dev/null; then fusermount3 -u "$MNT" || fusermount3 -uz "$MNT"; fi
    as_pg "$PGBIN/pg_ctl" -D "$WORK/pgdata" -m immediate stop >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

step "Throwaway PostgreSQL 15 in $WORK/pgdata"
mkdir -p "$WORK/pgdata" "$WORK/sock" "$WORK/log" "$MNT"
[ "$(id -u)" -eq 0 ] && chown postgres "$WORK/pgdata" "$WORK/sock" "$WORK/log"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg "$PGBIN/initdb" -D "$WORK/pgdata" -A trust -U postgres --no-sync >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$WORK/pgdata" -l "$WORK/log/postgres.log" -w \
    -o "-p $PORT -k $WORK/sock -c listen_addresses='' -c fsync=off" start >/dev/null
export PGHOST=$WORK/sock PGPORT=$PORT PGUSER=postgres
psql() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }

step "FootDash sample data, scale $SCALE"
"$PGBIN/createdb" footdash
psql -d footdash -f tests/data/footdash-schema.sql
sed "s/__SCALE__/$SCALE/g" tests/data/footdash-data.sql | psql -d footdash
psql -d footdash -c 'VACUUM ANALYZE'

step "A local repository"
export PGVAULT_REPO=$WORK/repo PGVAULT_CACHE_DIR=$WORK/cache
echo "demo passphrase $(date +%s)" > "$WORK/pass"
export PGVAULT_PASSWORD_FILE=$WORK/pass
"$PGVAULT" init

step "Monday's dump, then a day of traffic and Tuesday's"
"$PGVAULT" backup --db footdash --time "$(date -u -d 'yesterday 02:00' +%Y-%m-%dT%H:%M:%SZ)"
sed -e "s/__TS__/(now())/g" -e "s/__DAY__/1/g" tests/data/footdash-day.sql | psql -d footdash
"$PGVAULT" backup --db footdash
step "The same data again: only the header chunk is new"
"$PGVAULT" backup --db footdash
"$PGVAULT" snapshots

step "Mount the history at $MNT"
"$PGVAULT" mount "$MNT" &
mount_pid=$!
for _ in $(seq 100); do mountpoint -q "$MNT" && break; sleep 0.1; done
mountpoint -q "$MNT" || { echo "demo: the mount did not come up" >&2; exit 1; }
find "$MNT/by-date" -maxdepth 4 | sed "s|$MNT|  |"

step "pg_restore reads the latest backup straight from the mount"
"$PGBIN/pg_restore" -l "$MNT/latest/footdash.dump" | grep -c 'TABLE DATA' | sed 's/^/  table data entries: /'
"$PGBIN/createdb" footdash_restore
"$PGBIN/pg_restore" -j 2 -d footdash_restore "$MNT/latest/footdash.dump"

count_rows() {
    psql -At -d "$1" -c "SELECT string_agg(t || '=' || n, ' ' ORDER BY t) FROM (
        SELECT 'users' t, count(*) n FROM users UNION ALL SELECT 'teams', count(*) FROM teams
        UNION ALL SELECT 'players', count(*) FROM players UNION ALL SELECT 'matches', count(*) FROM matches
        UNION ALL SELECT 'match_events', count(*) FROM match_events
        UNION ALL SELECT 'notifications', count(*) FROM notifications) c"
}
src=$(count_rows footdash); dst=$(count_rows footdash_restore)
echo "  source:   $src"
echo "  restored: $dst"
[ "$src" = "$dst" ] || { echo "demo: row counts differ" >&2; exit 1; }
echo
echo "Demo passed: backed up (deduplicated), mounted, and restored from the mount with equal row counts"
