#!/usr/bin/env bash
# Start several detached jobs, then wait for each and report how it ended, using only `--json`
# output and exit codes. Exits 0 if every job completed cleanly, else the worst job's exit code.
#
#   ./parallel_jobs.sh "AAPL MSFT" "XOM CVX" "JPM BAC"
#
# Environment: COLLECT (default `collect`), COLLECT_ARGS (extra `collect start` arguments).
set -u
collect=${COLLECT:-collect}
[ $# -gt 0 ] || set -- "AAPL MSFT" "XOM CVX" "JPM BAC"

ids=()
for group in "$@"; do
    # shellcheck disable=SC2086  # a group is several symbols
    json=$("$collect" start $group ${COLLECT_ARGS:-} --detach --json) || exit $?
    id=$(printf '%s' "$json" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
    echo "started $id: $group"
    ids+=("$id")
done

worst=0
for id in "${ids[@]}"; do
    "$collect" wait "$id"
    code=$?
    summary=$("$collect" status "$id" --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
print("%s, %d/%d symbols, %d candles" % (s["status"], s["symbols_completed"], s["symbols_total"], s["candles"]))')
    echo "$id: exit $code ($summary)"
    [ "$code" -gt "$worst" ] && worst=$code
done
exit "$worst"
