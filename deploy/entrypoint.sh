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

stopping=0
trap 'stopping=1; kill -TERM "$gateway" "$daemon" 2>/dev/null' TERM INT
wait -n "$daemon" "$gateway"
first=$?
kill -TERM "$gateway" "$daemon" 2>/dev/null
wait "$gateway"; gateway_status=$?
wait "$daemon"; daemon_status=$?
# Asked to stop: how the two stopped. Otherwise: how the first one ended.
if [ "$stopping" = 1 ]; then
    [ "$gateway_status" = 0 ] && exit "$daemon_status"
    exit "$gateway_status"
fi
exit "$first"
