# Shared by the benchmark scripts that run a throwaway PostgreSQL cluster and a
# pgvault mount (mount_read.sh, dump_tables.sh); sourced, not run. Before sourcing,
# a script may set BUILD_ARGS (extra `cargo build --release` arguments). Provides:
# $here, $PGVAULT (built unless PGVAULT_BIN is set), $PG_BIN_DIR, a private $work
# directory removed on exit (stopping the mount and the cluster), $mnt, the pgvault
# and libpq environment, psql, as_pg, now, median, timed, mount_fresh, unmount, and
# start_cluster (initdb and start, as the postgres OS user when run as root), and
# table_counts (each footdash table's row count in a database, `-` where missing),
# load_footdash (database footdash with FootDash data at a scale), and footdash_day
# (a day of FootDash traffic).

PG_BIN_DIR=${PG_BIN_DIR:-/usr/lib/postgresql/15/bin}
here=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$here/target}
PGVAULT=${PGVAULT_BIN:-$target/release/pgvault}

if [ -z "${PGVAULT_BIN:-}" ]; then
    # shellcheck disable=SC2086 # BUILD_ARGS is a list of arguments
    (cd "$here" && cargo build --release --quiet ${BUILD_ARGS:-})
fi

work=$(mktemp -d /tmp/pgvault-bench-XXXXXX)
chmod 755 "$work"
mnt=$work/mnt
mount_pid=""
pg_started=0
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }

cleanup() {
    if [ -n "$mount_pid" ]; then kill -TERM "$mount_pid" 2>/dev/null || true; wait "$mount_pid" 2>/dev/null || true; fi
    if mountpoint -q "$mnt" 2>/dev/null; then fusermount3 -u -z "$mnt" 2>/dev/null || true; fi
    if [ "$pg_started" = 1 ]; then as_pg "$PG_BIN_DIR/pg_ctl -D $work/pg/data -m fast -w stop" >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

export PGVAULT_REPO=$work/repo PGVAULT_PASSWORD=bench PGVAULT_CACHE_DIR=$work/cache
port=$((40000 + $$ % 20000))
export PGHOST=$work/pg PGPORT=$port PGUSER=postgres PGVAULT_PG_BINDIR=$PG_BIN_DIR
psql() { "$PG_BIN_DIR/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
# Runs a command with its output discarded and prints how long it took.
timed() { local s e; s=$(now); "$@" >/dev/null; e=$(now); awk -v s="$s" -v e="$e" 'BEGIN {printf "%.4f", e - s}'; }

mount_fresh() {
    "$PGVAULT" mount "$mnt" >>"$work/mount.log" 2>&1 &
    mount_pid=$!
    for _ in $(seq 600); do mountpoint -q "$mnt" && return 0; sleep 0.05; done
    echo "mount did not come up:" >&2; cat "$work/mount.log" >&2; exit 1
}
unmount() { kill -TERM "$mount_pid"; wait "$mount_pid" || true; mount_pid=""; }

# Creates database footdash with FootDash data at scale $1, vacuumed and analyzed.
load_footdash() {
    psql -d postgres -c "CREATE DATABASE footdash"
    psql -d footdash -f "$here/tests/data/footdash-schema.sql" >/dev/null
    sed "s/__SCALE__/$1/g" "$here/tests/data/footdash-data.sql" | psql -d footdash >/dev/null
    psql -d footdash -c 'VACUUM ANALYZE'
}

# Applies day $1's FootDash traffic (tests/data/footdash-day.sql), dated the day
# before $2 (YYYY-MM-DD), then VACUUM ANALYZE.
footdash_day() {
    local prev
    prev=$(date -u -d "$2 - 1 day" +%F)
    sed -e "s/__TS__/(timestamptz '$prev 00:00:00+00')/g" -e "s/__DAY__/$1/g" \
        "$here/tests/data/footdash-day.sql" | psql -d footdash >/dev/null
    psql -d footdash -c 'VACUUM ANALYZE' >/dev/null
}

# The row count of each table of database footdash, in database $1: "t=n ...".
table_counts() {
    local db=$1 t out=""
    for t in $(psql -At -d footdash -c "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE nspname = 'public' AND relkind = 'r' ORDER BY relname"); do
        out="$out $t=$(psql -At -d "$db" -c "SELECT count(*) FROM public.$t" 2>/dev/null || echo -)"
    done
    echo "$out"
}

start_cluster() {
    mkdir -p "$work/pg" "$mnt"
    if [ "$(id -u)" = 0 ]; then chown postgres "$work/pg"; fi
    as_pg "$PG_BIN_DIR/initdb -D $work/pg/data -A trust -U postgres --no-sync --locale=C -E UTF8" >/dev/null
    as_pg "$PG_BIN_DIR/pg_ctl -D $work/pg/data -l $work/pg/log -w -o \"-p $port -k $work/pg -c listen_addresses='' -c fsync=off\" start" >/dev/null
    pg_started=1
}
