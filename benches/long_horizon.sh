#!/usr/bin/env bash
# Benchmark for the long horizon (issue "Small for months"): 35 daily FootDash dumps
# with the runbook's retention (keep 7 dailies and 4 weeklies, prune) applied after
# every backup, plain 256 KiB chunking (the reference) beside delta chunks, in one run.
# It is benches/delta_days.sh with these settings; every variable it reads can be set.
#
#   benches/long_horizon.sh                         # 35 days of ~50 MB dumps
#   SCALE=3 DAYS=15 benches/long_horizon.sh         # a quick smoke run
#
# Reported: stored (added) and kept bytes per day, the daily cost of the first week
# against the last, and what each repository keeps after the last day. Goals: the last
# week's daily cost within 1.5x of the first week's, and delta-256K keeping at most
# 0.15x of what plain-256K keeps.
set -euo pipefail
export DAYS=${DAYS:-35}
export SCALE=${SCALE:-32}
export RUNS=${RUNS:-1}
export RETENTION=${RETENTION:---keep-daily 7 --keep-weekly 4}
export MODES=${MODES:-plain-256K=--delta off;delta-256K=--delta on}
exec "$(dirname "$0")/delta_days.sh" "$@"
