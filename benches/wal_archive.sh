#!/usr/bin/env bash
# WAL archiving and point-in-time recovery, side by side with pgBackRest, in one run.
#
# One throwaway PostgreSQL 15 makes real WAL under pgbench (archived with cp into a
# stash), with one base backup taken by each tool at the start. Then, on the same
# segments:
#   push  - a backlog of N ready segments drained the way PostgreSQL's archiver does
#           (one archive_command per segment, in order, .ready renamed to .done), by:
#           cp (the floor), pgvault wal-push, pgvault wal-push --async, pgbackrest
#           archive-push, pgbackrest archive-push with archive-async. Each run starts
#           from an empty archive. Reported: median wall time, segments/s, machine
#           CPU seconds per GB of WAL (from /proc/stat, so background agents count),
#           stored bytes, and zstd -3 of the segments for scale.
#   lag   - pgbench -c 4 at full speed on a fresh cluster per mode, archiving with
#           pgvault wal-push, pgvault --async and pgbackrest async: WAL made per
#           second, the largest backlog of .ready files, and how long the backlog
#           takes to drain after pgbench stops (0: the archiver kept up).
#   rpo   - what losing the primary costs: one commit at a time (each acknowledged
#           before the next, its time noted by the client) for RPO_SECONDS (default
#           90), then the primary is killed (pg_ctl -m immediate) and restored
#           --latest from the repository. Reported: commits and seconds lost, with
#           wal-push --async and archive_timeout = 60, and with wal-receive
#           (--partial-interval 10s, the default) and no archive_command.
#   pitr  - a restore of each tool's base backup to the end of the archive (every
#           segment replayed), with the server started and timed until it is
#           promoted: pgvault (restore writes wal-fetch --async), pgvault with the
#           synchronous wal-fetch, pgbackrest archive-get, pgbackrest with its async
#           prefetch. The restored row count is checked against the source's.
# Both tools encrypt (pgBackRest aes-256-cbc) and compress with zstd level 3.
# Not run in CI. Usage: [PHASES="push pitr lag rpo"] [RPO_SECONDS=90] benches/wal_archive.sh [segments] [runs] [lag seconds]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
SEGMENTS=${1:-64}
RUNS=${2:-3}
LAG_SECONDS=${3:-30}
PHASES=${PHASES:-push pitr lag rpo}
RPO_SECONDS=${RPO_SECONDS:-90}
PGBIN=${PG_BIN_DIR:-/usr/lib/postgresql/15/bin}
PGVAULT=${PGVAULT_BIN:-${CARGO_TARGET_DIR:-$here/target}/release/pgvault}
die() { echo "wal_archive.sh: $*" >&2; exit 1; }
[ -x "$PGVAULT" ] || die "no pgvault binary at $PGVAULT (cargo build --release, or set PGVAULT_BIN)"
if ! command -v pgbackrest >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbackrest >/dev/null || die "cannot install pgbackrest"
fi

WORK=$(mktemp -d /tmp/pgvault-walarchive.XXXXXX)
chmod 755 "$WORK"
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
stop_all() {
    # Its own d: bash scope is dynamic, and callers keep their data directory in d.
    local d
    for d in "$WORK"/pgdata*; do
        [ -f "$d/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
    done
    pkill -f "$PGVAULT.* wal-agent" 2>/dev/null || true
    pkill -f "$PGVAULT.* wal-receive" 2>/dev/null || true
}
cleanup() { stop_all; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/stash" "$WORK/sock" "$WORK/spool"
echo "bench passphrase" > "$WORK/pass"
[ "$(id -u)" -eq 0 ] && chown -R postgres "$WORK"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export PGHOST=$WORK/sock PGPORT=$PORT PGUSER=postgres
psql_() { "$PGBIN/psql" -X -At -d postgres -c "$1"; }

# pgBackRest: one stanza, zstd 3 and encryption as pgvault; async=y adds the async
# archive-push/archive-get (spool, 4 processes, as pgvault's --jobs).
write_conf() { # file async stanza repo pgdata
    cat > "$1" <<CONF
[global]
repo1-path=$4
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=bench passphrase
compress-type=zst
compress-level=3
log-level-console=warn
log-level-file=off
lock-path=$WORK/pgbr-lock
spool-path=$WORK/spool
archive-async=$2
process-max=4
archive-get-queue-max=256MiB
start-fast=y
archive-check=n

[$3]
pg1-path=$5
pg1-port=$PORT
pg1-socket-path=$WORK/sock
CONF
}
write_conf "$WORK/pgbr.conf" n bench "$WORK/pgbr" "$WORK/pgdata"
write_conf "$WORK/pgbr-async.conf" y bench "$WORK/pgbr" "$WORK/pgdata"
[ "$(id -u)" -eq 0 ] && chown postgres "$WORK"/pgbr*.conf
# start_promoted DIR LOG: starts a restored data directory on the bench's port, not
# archiving, and waits until recovery has ended and promoted it.
start_promoted() {
    cat >> "$1/postgresql.auto.conf" <<CONF
port = $PORT
unix_socket_directories = '$WORK/sock'
archive_mode = off
CONF
    as_pg "$PGBIN/pg_ctl" -D "$1" -l "$2" start >/dev/null
    until [ "$(psql_ 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do sleep 0.05; done
}
BR="pgbackrest --config=$WORK/pgbr.conf --stanza=bench"
BR_ASYNC="pgbackrest --config=$WORK/pgbr-async.conf --stanza=bench"
PV="env PGVAULT_PASSWORD_FILE=$WORK/pass PGVAULT_CACHE_DIR=$WORK/cache $PGVAULT"

if [[ " $PHASES " == *" push "* || " $PHASES " == *" pitr "* ]]; then
echo "== making WAL: pgbench on a throwaway cluster, archived with cp"
as_pg "$PGBIN/initdb" -D "$WORK/pgdata" -A trust -U postgres --no-sync >/dev/null
cat >> "$WORK/pgdata/postgresql.conf" <<CONF
port = $PORT
unix_socket_directories = '$WORK/sock'
listen_addresses = ''
wal_level = replica
archive_mode = on
archive_command = 'cp %p $WORK/stash/%f'
max_wal_size = 4GB
# More WAL per second of pgbench: the segments are only the test's material.
synchronous_commit = off
CONF
as_pg "$PGBIN/pg_ctl" -D "$WORK/pgdata" -l "$WORK/pg.log" -w start >/dev/null
"$PGBIN/pgbench" -q -i -s 10 postgres >/dev/null 2>&1
as_pg env PGVAULT_REPO="$WORK/pv" $PV init >/dev/null
as_pg env PGVAULT_REPO="$WORK/pv" PGVAULT_PG_BINDIR="$PGBIN" PGHOST="$PGHOST" PGPORT="$PGPORT" PGUSER=postgres $PV backup --base >/dev/null
as_pg $BR stanza-create >/dev/null
as_pg $BR backup --type=full >/dev/null
first=$(psql_ "SELECT pg_walfile_name(pg_current_wal_lsn())")
while [ "$(ls "$WORK/stash" | grep -c '^[0-9A-F]\{24\}$')" -lt $((SEGMENTS + 8)) ]; do
    "$PGBIN/pgbench" -c 4 -j 2 -T 10 -n postgres >/dev/null 2>&1
done
psql_ "SELECT pg_switch_wal()" >/dev/null
sleep 2
rows=$(psql_ "SELECT count(*) || ' ' || sum(delta) FROM pgbench_history")
as_pg "$PGBIN/pg_ctl" -D "$WORK/pgdata" -m fast -w stop >/dev/null
all=$(ls "$WORK/stash" | grep '^[0-9A-F]\{24\}$' | sort)
segs=$(echo "$all" | awk -v f="$first" '$0 >= f' | head -n "$SEGMENTS")
n=$(echo "$segs" | wc -l)
gb=$(awk "BEGIN {print $n * 16 / 1024}")
echo "$n segments from $first for the push test; $(echo "$all" | wc -l) in all for recovery"
zstd3=0
for s in $segs; do zstd3=$((zstd3 + $(zstd -3 -q -c "$WORK/stash/$s" | wc -c))); done

cpu_jiffies() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
# The push test's pg_wal, inside a data directory as pgBackRest's async push requires
# (pg_control and PG_VERSION copied from the source).
FAKE=$WORK/fakepg
mkdir -p "$FAKE/global"
cp "$WORK/pgdata/global/pg_control" "$FAKE/global/"
cp "$WORK/pgdata/PG_VERSION" "$FAKE/"
[ "$(id -u)" -eq 0 ] && chown -R postgres "$FAKE"
fi
# drain MODE: push the backlog with MODE's archive_command; prints "wall cpu_s bytes".
drain() {
    local mode=$1 dir=$FAKE/pg_wal dest
    stop_all
    rm -rf "$dir" "$WORK/cpdest" "$WORK/pvpush" "$WORK/cache" "$WORK/spool"/* "$WORK/pgbr/archive/bench/15-1"/0*
    mkdir -p "$dir/archive_status" "$WORK/cpdest"
    for s in $segs; do ln "$WORK/stash/$s" "$dir/$s"; touch "$dir/archive_status/$s.ready"; done
    [ "$(id -u)" -eq 0 ] && chown -R postgres "$dir" "$WORK/cpdest" "$WORK/spool"
    as_pg env PGVAULT_REPO="$WORK/pvpush" $PV init >/dev/null
    local cmd
    case $mode in
        cp) cmd="cp"; dest=$WORK/cpdest ;;
        pgvault) cmd="$PV wal-push" ;;
        pgvault-async) cmd="$PV wal-push --async" ;;
        pgbackrest) cmd="$BR archive-push --pg1-path=$FAKE" ;;
        pgbackrest-async) cmd="$BR_ASYNC archive-push --pg1-path=$FAKE" ;;
    esac
    sync
    local c0 t0 t1 c1
    c0=$(cpu_jiffies); t0=$(date +%s.%N)
    for s in $segs; do
        if [ "$mode" = cp ]; then
            as_pg cp "$dir/$s" "$dest/$s"
        else
            local tries=0
            until as_pg env PGVAULT_REPO="$WORK/pvpush" $cmd "$dir/$s"; do
                tries=$((tries + 1))
                [ $tries -lt 5 ] || die "$mode cannot push $s"
                echo "  retry $s ($mode)" >&2
            done
        fi
        mv "$dir/archive_status/$s.ready" "$dir/archive_status/$s.done"
    done
    t1=$(date +%s.%N); c1=$(cpu_jiffies)
    local bytes
    case $mode in
        cp) bytes=$(du -sb "$WORK/cpdest" | cut -f1) ;;
        pgvault*) bytes=$(du -sb "$WORK/pvpush" | cut -f1) ;;
        pgbackrest*) bytes=$(du -sb "$WORK/pgbr/archive" | cut -f1) ;;
    esac
    echo "$(awk "BEGIN {print $t1 - $t0}") $(awk "BEGIN {print ($c1 - $c0) / $(getconf CLK_TCK)}") $bytes"
}

if [[ " $PHASES " == *" push "* ]]; then
echo "== push: $RUNS runs of each, interleaved"
modes="cp pgvault pgvault-async pgbackrest pgbackrest-async"
declare -A wall cpu stored
for r in $(seq "$RUNS"); do
    for m in $modes; do
        read -r w c b < <(drain "$m")
        wall[$m]="${wall[$m]:-} $w"; cpu[$m]="${cpu[$m]:-} $c"; stored[$m]=$b
        echo "  run $r $m: ${w}s"
    done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo
echo "push of $n segments ($(awk "BEGIN {printf \"%.2f\", $gb}") GB), median of $RUNS:"
printf "%-18s %9s %11s %13s %12s\n" mode "wall s" "segments/s" "CPU s per GB" "stored MB"
for m in $modes; do
    w=$(echo "${wall[$m]}" | median); c=$(echo "${cpu[$m]}" | median)
    printf "%-18s %9.2f %11.1f %13.1f %12.1f\n" "$m" "$w" "$(awk "BEGIN {print $n / $w}")" \
        "$(awk "BEGIN {print $c / $gb}")" "$(awk "BEGIN {print ${stored[$m]} / 1e6}")"
done
echo "zstd -3 of the segments: $(awk "BEGIN {printf \"%.1f\", $zstd3 / 1e6}") MB"
fi

if [[ " $PHASES " == *" pitr "* ]]; then
echo
echo "== pitr: restore to the end of the archive and recover, $RUNS runs of each"
stop_all
for s in $all; do
    as_pg env PGVAULT_REPO="$WORK/pv" $PV wal-push "$WORK/stash/$s" >/dev/null
    as_pg $BR archive-push "$WORK/stash/$s" >/dev/null
done
# recover MODE: prints "restore_s recovery_s"; checks the rows.
recover() {
    local mode=$1 d=$WORK/pgdata-r t0 t1 t2
    stop_all
    rm -rf "$d" "$WORK/cache" "$WORK/spool"/*
    mkdir -m 700 "$d"; [ "$(id -u)" -eq 0 ] && chown postgres "$d" "$WORK/spool"
    t0=$(date +%s.%N)
    case $mode in
        pgvault*) as_pg env PGVAULT_REPO="$WORK/pv" $PV restore --pgdata "$d" --latest >/dev/null 2>&1 ;;
        pgbackrest*) as_pg $BR restore --pg1-path="$d" >/dev/null ;;
    esac
    t1=$(date +%s.%N)
    case $mode in
        pgvault-sync) sed -i 's/ wal-fetch --async / wal-fetch /' "$d/postgresql.auto.conf" ;;
        pgbackrest) echo "restore_command = '$BR archive-get %f \"%p\"'" >> "$d/postgresql.auto.conf" ;;
        pgbackrest-async) echo "restore_command = '$BR_ASYNC archive-get %f \"%p\"'" >> "$d/postgresql.auto.conf" ;;
    esac
    start_promoted "$d" "$WORK/restored.log"
    t2=$(date +%s.%N)
    local got
    got=$(psql_ "SELECT count(*) || ' ' || sum(delta) FROM pgbench_history")
    [ "$got" = "$rows" ] || die "$mode restored rows '$got', the source had '$rows'"
    as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null
    echo "$(awk "BEGIN {print $t1 - $t0}") $(awk "BEGIN {print $t2 - $t1}")"
}
pmodes="pgvault pgvault-sync pgbackrest pgbackrest-async"
declare -A rest reco
for r in $(seq "$RUNS"); do
    for m in $pmodes; do
        read -r a b < <(recover "$m")
        rest[$m]="${rest[$m]:-} $a"; reco[$m]="${reco[$m]:-} $b"
        echo "  run $r $m: restore ${a}s, recovery ${b}s"
    done
done
echo
echo "point-in-time recovery replaying $(echo "$all" | wc -l) archived segments, median of $RUNS (rows checked):"
printf "%-18s %10s %11s %9s\n" mode "restore s" "recovery s" "total s"
for m in $pmodes; do
    a=$(echo "${rest[$m]}" | median); b=$(echo "${reco[$m]}" | median)
    printf "%-18s %10.2f %11.2f %9.2f\n" "$m" "$a" "$b" "$(awk "BEGIN {print $a + $b}")"
done
fi

if [[ " $PHASES " == *" lag "* ]]; then
echo
echo "== lag: pgbench -c 4 for ${LAG_SECONDS}s on a fresh cluster per mode"
stop_all
# lag MODE: prints "tps segments_per_s max_backlog drain_s failures".
lag() {
    local mode=$1 d=$WORK/pgdata-lag cmd
    stop_all
    rm -rf "$d" "$WORK/pvlag" "$WORK/pgbr-lag" "$WORK/cache" "$WORK/spool"/*
    as_pg "$PGBIN/initdb" -D "$d" -A trust -U postgres --no-sync >/dev/null
    as_pg env PGVAULT_REPO="$WORK/pvlag" $PV init >/dev/null
    write_conf "$WORK/pgbr-lag.conf" y lag "$WORK/pgbr-lag" "$d"
    [ "$(id -u)" -eq 0 ] && chown postgres "$WORK/pgbr-lag.conf" "$WORK/spool"
    case $mode in
        pgvault) cmd="PGVAULT_REPO=$WORK/pvlag $PV wal-push %p" ;;
        pgvault-async) cmd="PGVAULT_REPO=$WORK/pvlag $PV wal-push --async %p" ;;
        pgbackrest-async) cmd="pgbackrest --config=$WORK/pgbr-lag.conf --stanza=lag archive-push %p" ;;
    esac
    cat >> "$d/postgresql.conf" <<CONF
port = $PORT
unix_socket_directories = '$WORK/sock'
listen_addresses = ''
wal_level = replica
archive_mode = on
archive_command = '$cmd'
max_wal_size = 4GB
CONF
    as_pg "$PGBIN/pg_ctl" -D "$d" -l "$WORK/lag.log" -w start >/dev/null
    if [ "$mode" = pgbackrest-async ]; then
        as_pg pgbackrest --config="$WORK/pgbr-lag.conf" --stanza=lag stanza-create >/dev/null
    fi
    "$PGBIN/pgbench" -q -i -s 10 postgres >/dev/null 2>&1
    local ready
    ready() { ls "$d/pg_wal/archive_status" 2>/dev/null | grep -c '\.ready$' || true; }
    while [ "$(ready)" -gt 0 ]; do sleep 0.5; done
    local lsn0 max=0 r
    lsn0=$(psql_ "SELECT pg_current_wal_lsn()")
    "$PGBIN/pgbench" -c 4 -j 2 -T "$LAG_SECONDS" -n postgres > "$WORK/lag-pgbench.out" 2>&1 &
    local bench=$!
    while kill -0 $bench 2>/dev/null; do
        r=$(ready); [ "$r" -gt "$max" ] && max=$r
        sleep 1
    done
    local segs t0 drain
    segs=$(psql_ "SELECT round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0') / 16777216.0 / $LAG_SECONDS, 2)")
    t0=$(date +%s.%N)
    while [ "$(ready)" -gt 0 ]; do sleep 0.2; done
    drain=$(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $t0}")
    local tps failed
    tps=$(grep -o 'tps = [0-9.]*' "$WORK/lag-pgbench.out" | head -1 | cut -d' ' -f3)
    failed=$(psql_ "SELECT failed_count FROM pg_stat_archiver")
    as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null
    echo "$tps $segs $max $drain $failed"
}
printf "%-18s %9s %13s %12s %14s %9s\n" mode tps "WAL seg/s" "max backlog" "drain after s" failures
for m in pgvault pgvault-async pgbackrest-async; do
    read -r tps segs max drain failed < <(lag "$m")
    printf "%-18s %9.0f %13s %12s %14s %9s\n" "$m" "$tps" "$segs" "$max" "$drain" "$failed"
done
fi

if [[ " $PHASES " == *" rpo "* ]]; then
echo
echo "== rpo: commits for ${RPO_SECONDS}s, then the primary killed and restored --latest"
stop_all
# rpo MODE: prints "acknowledged commits_lost seconds_lost".
rpo() {
    local mode=$1 d=$WORK/pgdata-rpo r=$WORK/pgdata-rpo-r receiver=
    stop_all
    rm -rf "$d" "$r" "$WORK/pvrpo" "$WORK/cache" "$WORK/acked"
    as_pg "$PGBIN/initdb" -D "$d" -A trust -U postgres --no-sync >/dev/null
    as_pg env PGVAULT_REPO="$WORK/pvrpo" $PV init >/dev/null
    cat >> "$d/postgresql.conf" <<CONF
port = $PORT
unix_socket_directories = '$WORK/sock'
listen_addresses = ''
wal_level = replica
max_wal_senders = 4
max_replication_slots = 4
CONF
    if [ "$mode" = archive ]; then
        cat >> "$d/postgresql.conf" <<CONF
archive_mode = on
archive_command = 'PGVAULT_REPO=$WORK/pvrpo $PV wal-push --async %p'
archive_timeout = 60
CONF
    fi
    as_pg "$PGBIN/pg_ctl" -D "$d" -l "$WORK/rpo.log" -w start >/dev/null
    psql_ "CREATE TABLE ticks (n int PRIMARY KEY)" >/dev/null
    if [ "$mode" = receive ]; then
        as_pg env PGVAULT_REPO="$WORK/pvrpo" $PV wal-receive --create-slot > "$WORK/receive.log" 2>&1 &
        receiver=$!
        until [ "$(psql_ "SELECT count(*) FROM pg_replication_slots WHERE active")" = 1 ]; do sleep 0.1; done
    fi
    as_pg env PGVAULT_REPO="$WORK/pvrpo" $PV backup --base >/dev/null 2>&1
    local n=0 end=$(( $(date +%s) + RPO_SECONDS ))
    while [ "$(date +%s)" -lt "$end" ]; do
        n=$((n + 1))
        psql_ "INSERT INTO ticks VALUES ($n)" >/dev/null
        echo "$n $(date +%s.%N)" >> "$WORK/acked"
    done
    as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null
    if [ -n "$receiver" ]; then
        sleep 3
        # To pgvault itself: runuser does not pass SIGTERM on.
        pkill -TERM -f "$PGVAULT.* wal-receive" || true
        wait "$receiver" || true
    else
        pkill -f "$PGVAULT.* wal-agent" 2>/dev/null || true
    fi
    mkdir -m 700 "$r"; [ "$(id -u)" -eq 0 ] && chown postgres "$r"
    as_pg env PGVAULT_REPO="$WORK/pvrpo" $PV restore --pgdata "$r" --latest >/dev/null 2>&1
    start_promoted "$r" "$WORK/rpo-restored.log"
    local kept last_t kept_t
    kept=$(psql_ "SELECT coalesce(max(n), 0) FROM ticks")
    as_pg "$PGBIN/pg_ctl" -D "$r" -m immediate stop >/dev/null
    last_t=$(tail -1 "$WORK/acked" | cut -d' ' -f2)
    kept_t=$(awk -v k="$kept" '$1 == k {print $2}' "$WORK/acked")
    [ -n "$kept_t" ] || kept_t=$(head -1 "$WORK/acked" | cut -d' ' -f2)
    echo "$n $((n - kept)) $(awk "BEGIN {printf \"%.1f\", $last_t - $kept_t}")"
}
printf "%-34s %12s %13s %13s\n" mode acknowledged "commits lost" "seconds lost"
for m in archive receive; do
    read -r acked lost secs < <(rpo "$m")
    case $m in
        archive) label="wal-push --async, archive_timeout 60" ;;
        receive) label="wal-receive, --partial-interval 10s" ;;
    esac
    printf "%-34s %12s %13s %13s\n" "$label" "$acked" "$lost" "$secs"
done
fi
