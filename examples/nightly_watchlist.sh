#!/usr/bin/env bash
# Bring a watchlist up to date; made for cron: silent on success, and on failure one line in the
# log file and a non-zero exit (cron mails it if MAILTO is set).
#
#   crontab -e
#   30 2 * * 1-6  /path/to/nightly_watchlist.sh /path/to/watchlist.txt /path/to/nightly.log
#
# The watchlist has one symbol per line; blank lines and `# comments` are fine.
# Environment: COLLECT (the collect command, default `collect`), DAYS (window, default 7),
# COLLECT_ARGS (extra arguments for `collect start`, e.g. "-p demo -t 1h").
set -u

watchlist=${1:?usage: nightly_watchlist.sh WATCHLIST [LOGFILE]}
log=${2:-${HOME}/collect-nightly.log}
collect=${COLLECT:-collect}

# shellcheck disable=SC2086  # COLLECT_ARGS is meant to split into words
errors=$("$collect" start -f "$watchlist" --days "${DAYS:-7}" --name nightly --quiet ${COLLECT_ARGS:-} 2>&1 >/dev/null)
code=$?
if [ "$code" -ne 0 ]; then
    case $code in
        3) what="some symbols failed" ;;
        4) what="the job failed" ;;
        5) what="the job was cancelled" ;;
        *) what="collect exited with $code" ;;
    esac
    printf '%s nightly %s: %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$watchlist" "$what" \
        "$(printf '%s' "$errors" | tr '\n' ';')" >> "$log"
    exit "$code"
fi
