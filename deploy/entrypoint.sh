#!/bin/bash
# The container's entry point: engramd, and the gateway in front of it, stopped
# together. Arguments go to `engram gateway` (default: --auth token); it listens on
# $ENGRAM_GATEWAY_LISTEN (default 0.0.0.0:8080). When either process ends, or on
# SIGTERM/SIGINT, both are stopped gracefully; the exit status is the first to end's.
set -u
bin=$(dirname "$0")
export ENGRAM_GATEWAY_LISTEN="${ENGRAM_GATEWAY_LISTEN:-0.0.0.0:8080}" ENGRAM_NO_AUTOSTART=1
[ "$#" -gt 0 ] || set -- --auth token

"$bin/engramd" &
daemon=$!
"$bin/engram" gateway --allow-remote "$@" &
gateway=$!

# The exit status of process $1, waiting on through signals that interrupt `wait`.
status_of() {
    local status
    while :; do
        wait "$1"
        status=$?
        kill -0 "$1" 2>/dev/null || return "$status"
    done
}

stopping=0
trap 'stopping=1' TERM INT
wait -n "$daemon" "$gateway"
first=$?
kill -TERM "$gateway" "$daemon" 2>/dev/null  # once: both stop gracefully on the first
status_of "$gateway"; gateway_status=$?
status_of "$daemon"; daemon_status=$?
# Asked to stop: how the two stopped. Otherwise: how the first one ended.
if [ "$stopping" = 1 ]; then
    [ "$gateway_status" = 0 ] && exit "$daemon_status"
    exit "$gateway_status"
fi
exit "$first"
