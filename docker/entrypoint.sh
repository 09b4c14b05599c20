#!/bin/sh
# Container entry point: `serve` brings the database schema up to date, then replaces this shell
# with the daemon (so it is PID 1 and receives SIGTERM from `docker stop` directly).
# Anything else is passed to the postroom command as it is.
set -eu

if [ "${1:-serve}" = "serve" ]; then
    [ "$#" -gt 0 ] && shift
    postroom db upgrade
    exec postroom serve "$@"
fi
exec postroom "$@"
