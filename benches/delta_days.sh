#!/usr/bin/env bash
# Benchmark for delta chunks (issue "Delta chunks"): a week of daily FootDash dumps
# stored side by side in several repository modes, in one run. Not run in CI; does not
# build (point PGVAULT_BIN at a release build, default $CARGO_TARGET_DIR/release/pgvault).
#
#   benches/delta_days.sh                                  # defaults below (~430 MB dumps)
#   SCALE=3 DAYS=3 RUNS=1 benches/delta_days.sh            # a quick smoke run (~5 MB dumps)
#   PGVAULT_BIN=/tmp/pgvault OUT=delta.md benches/delta_days.sh
#   MODES='plain-1M=--chunk-min 262144 --chunk-avg 1048576 --chunk-max 4194304;plain-256K=' \
#       benches/delta_days.sh                             # a binary without --delta
#
# Environment:
#   SCALE  FootDash scale (default 280: ~1.54 MB of day-1 dump per unit, so ~430 MB)
#   DAYS   daily dumps (default 7)          RUNS   read runs, medians reported (default 3)
#   MODES  `name=init args` entries separated by `;`; the first is the reference. Default:
#          plain-1M=--chunk-min 262144 --chunk-avg 1048576 --chunk-max 4194304 --delta off;
#          plain-256K=--delta off;delta-256K=--delta on
#          (every init also gets --kdf-memory-kib 8192 --kdf-iterations 1)
#   RETENTION  forget options applied after every backup, with --prune, in every mode
#          (e.g. '--keep-daily 7 --keep-weekly 4', the runbook's); default none.
#          benches/long_horizon.sh runs 35 days with it
#   PGVAULT_BIN  the binary to measure   OUT  also write the Markdown report there
#   KEEP_WORK  set: keep the work directory (repositories, last dump) for a closer look
#   PG_BIN_DIR   PostgreSQL 15 binaries (default /usr/lib/postgresql/15/bin)
#
# What it measures. Day 1 is freshly loaded FootDash data; each later day applies
# tests/data/footdash-day.sql once (a day of traffic) and a VACUUM ANALYZE (the nightly
# job). Each day is dumped once with `pg_dump -Fc -Z0` to a file, and that same file is
# backed up (`backup --stdin --time <day 02:00Z>`) into every mode's repository, the
# modes interleaved (in an order rotated each day) so that machine noise is shared:
#   - stored bytes per day and in total: the growth of `du --json` total.chunk_bytes
#     (checked against the chunk files on disk);
#   - backup throughput: MB of dump read per second of wall time of the whole
#     `pgvault backup` process, day 1 and the median of days 2..DAYS;
#   - reads of the last dump, RUNS times, medians: `pgvault cat <snapshot> > /dev/null`,
#     and `cat` of the file through `pgvault mount`, a fresh mount for every read (an
#     empty chunk cache; the repository's files may be in the page cache for both);
#   - peak memory (max RSS from /usr/bin/time -f %M) of backup, cat and the mount process.
# Before timing, `pgvault cat` of each mode's last snapshot and the mounted file must be
# byte-identical to the last dump file; the script fails otherwise. MB = 10^6 bytes.
#
# Goals, for delta chunks against the reference (plain 1 MiB chunking):
#   - the seven daily dumps stored in at most 0.3x the bytes plain chunking stores;
#   - backup throughput at least 0.7x plain chunking's;
#   - reads through the mount at least 0.7x as fast.
#
# Needs PostgreSQL 15, fuse3 (fusermount3), jq, GNU time, and root or a user allowed to
# mount with fusermount3. As root, the server runs as the postgres OS user. Everything
# lives in one temp dir that is removed at the end, with the mount and server stopped.
set -euo pipefail

SCALE=${SCALE:-280}
DAYS=${DAYS:-7}
RUNS=${RUNS:-3}
MODES=${MODES:-plain-1M=--chunk-min 262144 --chunk-avg 1048576 --chunk-max 4194304 --delta off;plain-256K=--delta off;delta-256K=--delta on}
PG_BIN_DIR=${PG_BIN_DIR:-/usr/lib/postgresql/15/bin}
OUT=${OUT:-}
RETENTION=${RETENTION:-}
FIRST_DAY=2026-11-01
KDF_ARGS=(--kdf-memory-kib 8192 --kdf-iterations 1)
here=$(cd "$(dirname "$0")/.." && pwd)
PGVAULT=${PGVAULT_BIN:-${CARGO_TARGET_DIR:-$here/target}/release/pgvault}
started=$(date +%s)

die() { echo "delta_days: $*" >&2; exit 1; }
for v in SCALE DAYS RUNS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
[ -x "$PGVAULT" ] || die "no pgvault binary at $PGVAULT (this script does not build: cargo build --release, or set PGVAULT_BIN)"
[ -x "$PG_BIN_DIR/initdb" ] || die "PostgreSQL 15 is missing in $PG_BIN_DIR: apt-get install postgresql-15"
[ -x /usr/bin/time ] || die "GNU time is missing: apt-get install time"
command -v fusermount3 >/dev/null || die "fusermount3 is missing: apt-get install fuse3"
command -v jq >/dev/null || die "jq is missing: apt-get install jq"

# Modes: names[i] and margs[i] (the init arguments, split on whitespace when used).
names=()
margs=()
IFS=';' read -ra entries <<<"$MODES"
for e in "${entries[@]}"; do
    [[ $e =~ ^[[:space:]]*$ ]] && continue
    [[ $e == *=* ]] || die "MODES entry '$e' is not name=init args"
    n=${e%%=*}
    n=${n//[[:space:]]/}
    [[ $n =~ ^[A-Za-z0-9._+-]+$ ]] || die "MODES entry '$e': the name must be [A-Za-z0-9._+-]+"
    for o in "${names[@]}"; do [ "$o" != "$n" ] || die "MODES names mode '$n' twice"; done
    names+=("$n")
    margs+=("${e#*=}")
done
nm=${#names[@]}
[ "$nm" -ge 1 ] || die "MODES has no entries"

work=$(mktemp -d /tmp/pgvault-delta-XXXXXX)
chmod 755 "$work"
mnt=$work/mnt
time_pid=""  # /usr/bin/time around a running `pgvault mount`
mount_pid="" # the pgvault mount process under it
pg_started=0
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }

stop_mount() {
    local pid=$mount_pid
    [ -n "$pid" ] || { [ -z "$time_pid" ] || pid=$(pgrep -P "$time_pid" || true); }
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    if [ -n "$time_pid" ]; then wait "$time_pid" 2>/dev/null || true; fi
    if mountpoint -q "$mnt" 2>/dev/null; then fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -u -z "$mnt" 2>/dev/null || true; fi
    mount_pid=""
    time_pid=""
}
cleanup() {
    set +e
    stop_mount
    if [ "$pg_started" = 1 ]; then as_pg "$PG_BIN_DIR/pg_ctl -D $work/pg/data -m fast -w stop" >/dev/null 2>&1; fi
    if [ -n "${KEEP_WORK:-}" ]; then echo "kept $work (repositories repo0.. with caches cache0..)" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

export PGVAULT_PASSWORD=bench
port=$((40000 + $$ % 20000))
export PGHOST=$work/pg PGPORT=$port PGUSER=postgres PGVAULT_PG_BINDIR=$PG_BIN_DIR
unset PGVAULT_PASSWORD_FILE PGVAULT_REPO PGVAULT_CACHE_DIR
psql() { "$PG_BIN_DIR/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
maxof() { sort -g | tail -n1; }
calc() { awk "BEGIN {printf \"$1\", $2}"; }  # calc FORMAT EXPR
mb() { calc %.1f "$1 / 1e6"; }
# Runs pgvault on mode $1's repository.
pv() {
    local i=$1
    shift
    PGVAULT_REPO=$work/repo$i PGVAULT_CACHE_DIR=$work/cache$i "$PGVAULT" "$@"
}
# Like pv, under /usr/bin/time writing the max RSS (KiB) to $work/rss.
pv_rss() {
    local i=$1
    shift
    PGVAULT_REPO=$work/repo$i PGVAULT_CACHE_DIR=$work/cache$i /usr/bin/time -f %M -o "$work/rss" "$PGVAULT" "$@"
}
rss_kib() { tail -n1 "$work/rss"; }
chunk_bytes() { pv "$1" du --json | jq -e '.total.chunk_bytes'; }
chunk_files_bytes() {
    if [ -d "$work/repo$1/chunks" ]; then
        find "$work/repo$1/chunks" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}'
    else echo 0; fi
}

mount_fresh() {
    local i=$1
    PGVAULT_REPO=$work/repo$i PGVAULT_CACHE_DIR=$work/cache$i \
        /usr/bin/time -f %M -o "$work/rss" "$PGVAULT" mount "$mnt" >>"$work/mount.log" 2>&1 &
    time_pid=$!
    for _ in $(seq 600); do
        mountpoint -q "$mnt" && break
        kill -0 "$time_pid" 2>/dev/null || break
        sleep 0.05
    done
    mountpoint -q "$mnt" || { echo "mount of ${names[i]} did not come up:" >&2; cat "$work/mount.log" >&2; exit 1; }
    mount_pid=$(pgrep -P "$time_pid") || die "no pgvault mount process under /usr/bin/time"
}
unmount() { stop_mount; mount_rss_kib=$(rss_kib); }
mount_rss_kib=0
# The words of $1, one a line.
lines() { tr -s ' ' '\n' <<<"$1" | grep .; }

declare -A kept dump_size stored secs bk_rss new_bytes cat_t cat_rss mnt_t mnt_rss last_id prev_cb
notes=()

echo "== setup: PostgreSQL cluster, FootDash data (SCALE=$SCALE), $nm repositories"
echo "   binary: $PGVAULT ($("$PGVAULT" --version))"
mkdir -p "$work/pg" "$mnt"
[ "$(id -u)" = 0 ] && chown postgres "$work/pg"
as_pg "$PG_BIN_DIR/initdb -D $work/pg/data -A trust -U postgres --no-sync --locale=C -E UTF8" >/dev/null
as_pg "$PG_BIN_DIR/pg_ctl -D $work/pg/data -l $work/pg/log -w -o \"-p $port -k $work/pg -c listen_addresses='' -c fsync=off -c max_wal_size=4GB\" start" >/dev/null
pg_started=1
for i in $(seq 0 $((nm - 1))); do
    read -ra a <<<"${margs[i]}"
    pv "$i" init "${KDF_ARGS[@]}" "${a[@]}" >/dev/null ||
        die "init of mode ${names[i]} failed (init args: ${margs[i]:-none}); does this binary know them?"
    prev_cb[$i]=$(chunk_bytes "$i")
    echo "   mode ${names[i]}: init ${margs[i]:-(defaults)}"
done
t0=$(now)
psql -d postgres -c "CREATE DATABASE footdash"
psql -d footdash -f "$here/tests/data/footdash-schema.sql"
sed "s/__SCALE__/$SCALE/g" "$here/tests/data/footdash-data.sql" | psql -d footdash
psql -d footdash -c 'VACUUM ANALYZE'
echo "   data loaded in $(calc %.0f "$(now) - $t0") s"

for d in $(seq 1 "$DAYS"); do
    date=$(date -u -d "$FIRST_DAY + $((d - 1)) days" +%F)
    if [ "$d" -gt 1 ]; then
        prev=$(date -u -d "$date - 1 day" +%F)
        sed -e "s/__TS__/(timestamptz '$prev 00:00:00+00')/g" -e "s/__DAY__/$d/g" \
            "$here/tests/data/footdash-day.sql" | psql -d footdash
        psql -d footdash -c 'VACUUM ANALYZE'
    fi
    dump=$work/day$d.dump
    "$PG_BIN_DIR/pg_dump" -Fc -Z0 -f "$dump" footdash
    size=$(stat -c %s "$dump")
    dump_size[$d]=$size
    echo "== day $d ($date): dump $(mb "$size") MB"
    for k in $(seq 0 $((nm - 1))); do
        i=$(((k + d - 1) % nm))
        s=$(now)
        pv_rss "$i" backup --stdin --db footdash --time "${date}T02:00:00Z" --json <"$dump" >"$work/backup.json"
        e=$(now)
        secs[$i,$d]=$(calc %.4f "$e - $s")
        bk_rss[$i,$d]=$(rss_kib)
        last_id[$i]=$(jq -er '.snapshot_id' "$work/backup.json")
        new_bytes[$i,$d]=$(jq -e '.bytes_stored_new' "$work/backup.json")
        read_bytes=$(jq -e '.bytes_read' "$work/backup.json")
        [ "$read_bytes" = "$size" ] || notes+=("${names[i]} day $d: backup read $read_bytes bytes of a $size-byte dump")
        cb=$(chunk_bytes "$i")
        stored[$i,$d]=$((cb - ${prev_cb[$i]}))
        if [ -n "$RETENTION" ]; then
            read -ra ra <<<"$RETENTION"
            pv "$i" forget "${ra[@]}" --prune >/dev/null || die "${names[i]} day $d: forget $RETENTION --prune failed"
            cb=$(chunk_bytes "$i")
        fi
        kept[$i,$d]=$cb
        prev_cb[$i]=$cb
        [ "${new_bytes[$i,$d]}" = "${stored[$i,$d]}" ] ||
            notes+=("${names[i]} day $d: backup --json bytes_stored_new ${new_bytes[$i,$d]} but du chunk_bytes grew by ${stored[$i,$d]}")
        printf '   %-14s stored %9s MB  %7s MB/s  %6s MB RSS  kept %9s MB  snapshot %s\n' "${names[i]}" \
            "$(calc %.2f "${stored[$i,$d]} / 1e6")" "$(calc %.1f "$size / 1e6 / ${secs[$i,$d]}")" \
            "$(calc %.0f "${bk_rss[$i,$d]} / 1024")" "$(calc %.2f "${kept[$i,$d]} / 1e6")" "${last_id[$i]:0:8}"
    done
    if [ "$d" -lt "$DAYS" ]; then rm -f "$dump"; fi # every mode has stored it; keep the last
done
last=$work/day$DAYS.dump
size=${dump_size[$DAYS]}

echo "== repository sizes on disk"
for i in $(seq 0 $((nm - 1))); do
    files=$(chunk_files_bytes "$i")
    dusb=$( (du -sb "$work/repo$i/chunks" 2>/dev/null || echo 0) | cut -f1)
    repo_b=$(du -sb "$work/repo$i" | cut -f1)
    [ "$files" = "${prev_cb[$i]}" ] ||
        notes+=("${names[i]}: du --json chunk_bytes ${prev_cb[$i]} but the files under chunks/ hold $files bytes")
    notes+=("${names[i]}: du --json chunk_bytes $(mb "${prev_cb[$i]}") MB; files under chunks/ $(mb "$files") MB (du -sb chunks/ $(mb "$dusb") MB with directories); whole repository directory $(mb "$repo_b") MB")
    echo "   ${notes[-1]}"
done

echo "== byte checks: pgvault cat and the mount against the last dump ($(mb "$size") MB)"
for i in $(seq 0 $((nm - 1))); do
    rel=snapshots/${last_id[$i]}/footdash.dump
    pv "$i" cat "${last_id[$i]}" | cmp - "$last" || die "${names[i]}: pgvault cat ${last_id[$i]} differs from the dump"
    mount_fresh "$i"
    cmp "$mnt/$rel" "$last" || die "${names[i]}: $mnt/$rel differs from the dump"
    unmount
    echo "   ${names[i]}: cat and mount byte-identical"
done

echo "== reads of the last dump, $RUNS runs"
for r in $(seq 1 "$RUNS"); do
    for k in $(seq 0 $((nm - 1))); do
        i=$(((k + r - 1) % nm))
        s=$(now)
        pv_rss "$i" cat "${last_id[$i]}" >/dev/null
        e=$(now)
        ct=$(calc %.4f "$e - $s")
        cat_t[$i]="${cat_t[$i]:-} $ct"
        cat_rss[$i]="${cat_rss[$i]:-} $(rss_kib)"
        mount_fresh "$i"
        s=$(now)
        cat "$mnt/snapshots/${last_id[$i]}/footdash.dump" >/dev/null
        e=$(now)
        mt=$(calc %.4f "$e - $s")
        mnt_t[$i]="${mnt_t[$i]:-} $mt"
        unmount
        mnt_rss[$i]="${mnt_rss[$i]:-} $mount_rss_kib"
        printf '   run %d %-14s cat %8.3f s  mount (cold) %8.3f s\n' "$r" "${names[i]}" "$ct" "$mt"
    done
done

# ---- the report ----
rate() { calc %.1f "$1 / 1e6 / $2"; } # bytes, seconds
ratio() { calc %.2f "$1 / $2"; }
total_dump=0
for d in $(seq 1 "$DAYS"); do total_dump=$((total_dump + ${dump_size[$d]})); done
declare -A tot_stored tot_secs bk1 bkmed catm mntm rss_b rss_c rss_m
for i in $(seq 0 $((nm - 1))); do
    t=0
    ts=0
    for d in $(seq 1 "$DAYS"); do
        t=$((t + ${stored[$i,$d]}))
        ts=$(calc %.4f "$ts + ${secs[$i,$d]}")
    done
    tot_stored[$i]=$t
    tot_secs[$i]=$ts
    bk1[$i]=$(rate "${dump_size[1]}" "${secs[$i,1]}")
    if [ "$DAYS" -gt 1 ]; then
        bkmed[$i]=$(calc %.1f "$(for d in $(seq 2 "$DAYS"); do calc '%.6f\n' "${dump_size[$d]} / 1e6 / ${secs[$i,$d]}"; done | median)")
    else
        bkmed[$i]=${bk1[$i]}
    fi
    catm[$i]=$(lines "${cat_t[$i]}" | median)
    mntm[$i]=$(lines "${mnt_t[$i]}" | median)
    rss_b[$i]=$(for d in $(seq 1 "$DAYS"); do echo "${bk_rss[$i,$d]}"; done | maxof)
    rss_c[$i]=$(lines "${cat_rss[$i]}" | maxof)
    rss_m[$i]=$(lines "${mnt_rss[$i]}" | maxof)
done
med_label=$([ "$DAYS" -gt 1 ] && echo "median days 2-$DAYS" || echo "day 1")

report=$work/report.md
{
    echo "# Delta chunks: $DAYS daily FootDash dumps, side by side"
    echo
    echo "pgvault $("$PGVAULT" --version | awk '{print $NF}') ($PGVAULT), SCALE=$SCALE, RUNS=$RUNS;" \
        "$(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)), $(uname -sr)."
    echo "Dumps (\`pg_dump -Fc -Z0\`): day 1 $(mb "${dump_size[1]}") MB, day $DAYS $(mb "$size") MB, $(mb "$total_dump") MB in all."
    echo "Stored = growth of \`du --json\` total.chunk_bytes; MB/s = MB of dump per second of the whole backup process; MB = 10^6 bytes."
    echo
    echo "Modes (reference: ${names[0]}); every init also had \`${KDF_ARGS[*]}\`:"
    echo
    for i in $(seq 0 $((nm - 1))); do
        if [[ ${margs[i]} =~ [^[:space:]] ]]; then echo "- ${names[i]}: \`init ${margs[i]}\`"; else echo "- ${names[i]}: \`init\` (defaults)"; fi
    done
    echo
    echo "## Per day"
    echo
    printf '| day | dump MB |'
    for i in $(seq 0 $((nm - 1))); do printf ' %s stored MB | %s kept MB | %s MB/s |' "${names[i]}" "${names[i]}" "${names[i]}"; done
    echo
    printf '|---:|---:|'
    for _ in $(seq 1 "$nm"); do printf -- '---:|---:|---:|'; done
    echo
    for d in $(seq 1 "$DAYS"); do
        printf '| %d | %s |' "$d" "$(mb "${dump_size[$d]}")"
        for i in $(seq 0 $((nm - 1))); do
            printf ' %s | %s | %s |' "$(calc %.2f "${stored[$i,$d]} / 1e6")" "$(calc %.2f "${kept[$i,$d]} / 1e6")" "$(rate "${dump_size[$d]}" "${secs[$i,$d]}")"
        done
        echo
    done
    printf '| **total** | **%s** |' "$(mb "$total_dump")"
    for i in $(seq 0 $((nm - 1))); do
        printf ' **%s** | **%s** | **%s** |' "$(calc %.2f "${tot_stored[$i]} / 1e6")" "$(calc %.2f "${kept[$i,$DAYS]} / 1e6")" "$(rate "$total_dump" "${tot_secs[$i]}")"
    done
    echo
    echo
    echo "Stored = what that day's backup added; kept = the repository's chunk bytes after that day${RETENTION:+ (and after \`forget $RETENTION --prune\`)}. The totals row's MB/s is all dump bytes over all backup time."
    echo
    if [ "$DAYS" -ge 14 ]; then
        echo "## Over time"
        echo
        echo "Daily cost = median of what a day's backup added, days 2-8 against the last 7 days; kept = chunk bytes after day $DAYS${RETENTION:+ with the retention applied}. Goals (long horizon): the last week's daily cost within 1.5x of the first week's; kept at most 0.15x the reference's."
        echo
        echo "| mode | daily MB, days 2-8 | daily MB, days $((DAYS - 6))-$DAYS | last/first | kept MB | vs ref |"
        echo "|---|---:|---:|---:|---:|---:|"
        for i in $(seq 0 $((nm - 1))); do
            fw=$(for d in $(seq 2 8); do echo "${stored[$i,$d]}"; done | median)
            lw=$(for d in $(seq $((DAYS - 6)) "$DAYS"); do echo "${stored[$i,$d]}"; done | median)
            printf '| %s | %s | %s | %s | %s | %s |\n' "${names[i]}" "$(calc %.2f "$fw / 1e6")" "$(calc %.2f "$lw / 1e6")" \
                "$(ratio "$lw" "$fw")" "$(calc %.2f "${kept[$i,$DAYS]} / 1e6")" "$(ratio "${kept[$i,$DAYS]}" "${kept[0,$DAYS]}")"
        done
        echo
    fi
    echo "## Summary"
    echo
    echo "Reads: the day-$DAYS dump ($(mb "$size") MB), median of $RUNS; mount = a fresh \`pgvault mount\` per read (cold chunk cache). Ratios are against ${names[0]} (for speeds: this mode's speed / the reference's)."
    echo
    echo "| mode | stored MB ($DAYS days) | vs ref | backup MB/s day 1 | backup MB/s $med_label | vs ref | cat s | cat MB/s | vs ref | mount s | mount MB/s | vs ref | peak RSS MB backup | cat | mount |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for i in $(seq 0 $((nm - 1))); do
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "${names[i]}" \
            "$(calc %.2f "${tot_stored[$i]} / 1e6")" "$(ratio "${tot_stored[$i]}" "${tot_stored[0]}")" \
            "${bk1[$i]}" "${bkmed[$i]}" "$(ratio "${bkmed[$i]}" "${bkmed[0]}")" \
            "$(calc %.3f "${catm[$i]}")" "$(rate "$size" "${catm[$i]}")" "$(ratio "${catm[0]}" "${catm[$i]}")" \
            "$(calc %.3f "${mntm[$i]}")" "$(rate "$size" "${mntm[$i]}")" "$(ratio "${mntm[0]}" "${mntm[$i]}")" \
            "$(calc %.0f "${rss_b[$i]} / 1024")" "$(calc %.0f "${rss_c[$i]} / 1024")" "$(calc %.0f "${rss_m[$i]} / 1024")"
    done
    if [ "$nm" -gt 1 ]; then
        echo
        echo "Goals against ${names[0]}: stored <= 0.3x, backup ($med_label) >= 0.7x, mount reads >= 0.7x."
        echo
        for i in $(seq 1 $((nm - 1))); do
            awk -v n="${names[i]}" -v s="${tot_stored[$i]}" -v s0="${tot_stored[0]}" \
                -v b="${bkmed[$i]}" -v b0="${bkmed[0]}" -v m="${mntm[$i]}" -v m0="${mntm[0]}" 'BEGIN {
                rs = s / s0; rb = b / b0; rm = m0 / m
                printf "- %s: stored %.2fx (%s), backup %.2fx (%s), mount %.2fx (%s)\n", n,
                    rs, (rs <= 0.3 ? "met" : "missed"), rb, (rb >= 0.7 ? "met" : "missed"), rm, (rm >= 0.7 ? "met" : "missed")
            }'
        done
    fi
    echo
    echo "## Checks"
    echo
    echo "- \`pgvault cat\` of each mode's last snapshot and the mounted file: byte-identical to the day-$DAYS dump."
    for n in "${notes[@]}"; do echo "- $n"; done
    echo
    echo "Run took $(($(date +%s) - started)) s."
} >"$report"

echo
cat "$report"
if [ -n "$OUT" ]; then cp "$report" "$OUT"; fi
