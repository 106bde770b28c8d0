#!/usr/bin/env bash
# Start a throw-away PostgreSQL server for the test suite (installs Debian's package if missing)
# and print the URL to use as TEST_DATABASE_URL. Usage: export TEST_DATABASE_URL=$(bash scripts/start-postgres.sh)
set -euo pipefail
PORT="${PGPORT_TEST:-55432}"
DATA="${PGDATA_TEST:-/tmp/framefinder-pg}"
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
if [ -z "$(bindir)" ]; then
  $SUDO apt-get update -qq >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
BIN="$(bindir)"
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else "$@"; fi; }
if ! as_pg "$BIN/pg_ctl -D $DATA status" >/dev/null 2>&1; then
  rm -rf "$DATA" && mkdir -p "$DATA"
  [ "$(id -u)" = 0 ] && chown postgres "$DATA"
  as_pg "$BIN/initdb -D $DATA -A trust -U postgres" >/dev/null
  as_pg "$BIN/pg_ctl -D $DATA -l $DATA/server.log -w -o '-p $PORT -k /tmp -c listen_addresses=127.0.0.1' start" >/dev/null
fi
as_pg "$BIN/psql -h 127.0.0.1 -p $PORT -U postgres -tAc \"SELECT 1 FROM pg_database WHERE datname='framefinder_test'\"" \
  | grep -q 1 || as_pg "$BIN/createdb -h 127.0.0.1 -p $PORT -U postgres framefinder_test"
echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/framefinder_test"
