#!/usr/bin/env bash
# A throw-away PostgreSQL server on 127.0.0.1 for the Optuna storage tests (tests/test_storage_postgres.py).
#
#   .ci/postgres.sh start [--install]   initdb + start a cluster in a new temp folder; prints two lines:
#                                         KIT_POSTGRES_URL=postgresql://kit@127.0.0.1:<port>/optuna
#                                         KIT_POSTGRES_DIR=<the folder>
#   .ci/postgres.sh stop DIR            stop that server and delete DIR
#
# --install (CI): apt-get install postgresql when no initdb is found, and create a system user to run it as when
# running as root with no `postgres` user (initdb refuses root). Without it, a missing piece is an error (exit 1).
# The server listens on 127.0.0.1 only, trusts local connections (it holds nothing but test studies) and is
# started with fsync off: it is thrown away.
set -euo pipefail

find_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r) /usr/local/pgsql/bin \
           "$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")"; do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  done
  return 1
}

as_owner() {  # run a command as the cluster's owner ($owner; empty: this user)
  if [ -n "$owner" ]; then runuser -u "$owner" -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $((20000 + RANDOM % 20000))
}

case "${1:-}" in
start)
  install="${2:-}"
  if ! bindir=$(find_bindir); then
    if [ "$install" != "--install" ]; then echo "no PostgreSQL server binaries (initdb, pg_ctl) found" >&2; exit 1; fi
    echo "installing PostgreSQL from the Debian packages" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    bindir=$(find_bindir)
  fi
  owner=""
  if [ "$(id -u)" = 0 ]; then  # initdb refuses to run as root
    if id postgres >/dev/null 2>&1; then owner=postgres
    elif [ "$install" = "--install" ]; then
      id kitpg >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin kitpg
      owner=kitpg
    else echo "running as root and no 'postgres' user to run the server as" >&2; exit 1; fi
  fi
  dir=$(mktemp -d /tmp/kit-postgres.XXXXXX)
  [ -n "$owner" ] && chown "$owner" "$dir"
  port=$(free_port)
  as_owner "$bindir/initdb" -D "$dir/data" -U kit -A trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=50" start >/dev/null \
    || { cat "$dir/server.log" >&2; exit 1; }
  as_owner "$bindir/createdb" -h 127.0.0.1 -p "$port" -U kit optuna \
    || { as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null; exit 1; }
  echo "KIT_POSTGRES_URL=postgresql://kit@127.0.0.1:$port/optuna"
  echo "KIT_POSTGRES_DIR=$dir"
  ;;
stop)
  dir="${2:?usage: $0 stop DIR}"
  bindir=$(find_bindir)
  owner=""
  if [ "$(id -u)" = 0 ]; then owner=$(stat -c %U "$dir/data"); fi
  if [ -f "$dir/data/postmaster.pid" ]; then as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null; fi
  rm -rf "$dir"
  ;;
*)
  echo "usage: $0 start [--install] | stop DIR" >&2; exit 2 ;;
esac
