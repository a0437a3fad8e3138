#!/usr/bin/env bash
# A throw-away PostgreSQL server on 127.0.0.1 for tests/test_postgres.py (several `hwsbs tune`
# workers on one study).
#
#   .ci/postgres.sh          install Debian's postgresql if needed, start (or reuse) the server
#   .ci/postgres.sh stop     stop it
#
# Writes .ci/postgres.env (override with HWSBS_PG_ENV_FILE) holding either
#   HWSBS_TEST_POSTGRES_URL=postgresql+psycopg2://postgres:PASSWORD@127.0.0.1:PORT/hwsbs_test
# or, when no server can be started (no apt, not root, install failed, ...),
#   HWSBS_TEST_POSTGRES_SKIP=<why>
# and exits 0 either way: the test then skips with that reason. The fixture in tests/conftest.py
# reads the file, so nothing has to be exported. Idempotent: a running server is reused.
# The cluster lives in HWSBS_PG_DIR (default /tmp/hwsbs-postgres), fsync off: tests only.
set -u
cd "$(dirname "$0")/.."
ENV_FILE="${HWSBS_PG_ENV_FILE:-.ci/postgres.env}"
PGDIR="${HWSBS_PG_DIR:-/tmp/hwsbs-postgres}"
DB=hwsbs_test

say() { echo "postgres.sh: $*" >&2; }

write_env() {  # atomically: a reader never sees half a file
    printf '%s\n' "$1" > "$ENV_FILE.tmp" && chmod 600 "$ENV_FILE.tmp" && mv -f "$ENV_FILE.tmp" "$ENV_FILE"
}

skip() {
    say "no PostgreSQL server: $*"
    write_env "HWSBS_TEST_POSTGRES_SKIP=$*"
    exit 0
}

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

as_pg() {  # initdb and the server refuse to run as root
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
        || echo $((20000 + RANDOM % 20000))
}

BIN="$(pg_bin)"
if [ "${1:-start}" = stop ]; then
    [ -n "$BIN" ] && [ -f "$PGDIR/data/postmaster.pid" ] && as_pg "$BIN/pg_ctl" -D "$PGDIR/data" -m fast -w stop >&2
    rm -f "$ENV_FILE"
    exit 0
fi

if [ -z "$BIN" ]; then
    command -v apt-get >/dev/null 2>&1 || skip "postgresql is not installed and apt-get is not available"
    [ "$(id -u)" = 0 ] || skip "postgresql is not installed and installing it needs root"
    say "installing postgresql with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    log="$(mktemp)"
    if ! timeout 600 apt-get install -y -q --no-install-recommends postgresql >"$log" 2>&1; then
        timeout 300 apt-get update -q >>"$log" 2>&1
        timeout 600 apt-get install -y -q --no-install-recommends postgresql >>"$log" 2>&1 \
            || skip "apt-get install postgresql failed: $(grep -m1 -E '^E:' "$log" || tail -n 1 "$log")"
    fi
    rm -f "$log"
    BIN="$(pg_bin)"
    [ -n "$BIN" ] || skip "apt-get installed postgresql but no /usr/lib/postgresql/*/bin was found"
fi
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    skip "running as root but there is no postgres user to run the server as"
fi

if [ ! -f "$PGDIR/data/PG_VERSION" ]; then
    rm -rf "$PGDIR"
    mkdir -p "$PGDIR" && chmod 700 "$PGDIR" || skip "cannot create $PGDIR"
    [ "$(id -u)" = 0 ] && chown postgres: "$PGDIR"
    as_pg sh -c "umask 077; od -An -tx1 -N12 /dev/urandom | tr -d ' \n' > '$PGDIR/password'"
    as_pg "$BIN/initdb" -D "$PGDIR/data" -U postgres --pwfile="$PGDIR/password" --auth-local=trust \
        --auth-host=scram-sha-256 -E UTF8 --no-locale >"$PGDIR/initdb.log" 2>&1 \
        || skip "initdb failed: $(tail -n 1 "$PGDIR/initdb.log")"
fi

port=""
if as_pg "$BIN/pg_ctl" -D "$PGDIR/data" status >/dev/null 2>&1; then
    port="$(sed -n 4p "$PGDIR/data/postmaster.pid")"  # reuse the running server
else
    for _ in 1 2 3; do  # a free port can be taken between choosing and binding it: retry
        port="$(free_port)"
        if as_pg "$BIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w -t 60 \
            -o "-p $port -k $PGDIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" \
            start >/dev/null 2>&1; then
            break
        fi
        port=""
    done
    [ -n "$port" ] || skip "the server did not start: $(tail -n 1 "$PGDIR/server.log" 2>/dev/null)"
fi

if ! as_pg "$BIN/psql" -h "$PGDIR" -p "$port" -U postgres -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$DB'" 2>/dev/null | grep -q 1; then
    as_pg "$BIN/createdb" -h "$PGDIR" -p "$port" -U postgres "$DB" 2>/dev/null || skip "createdb $DB failed"
fi
password="$(cat "$PGDIR/password")"
write_env "HWSBS_TEST_POSTGRES_URL=postgresql+psycopg2://postgres:$password@127.0.0.1:$port/$DB"
say "PostgreSQL $(basename "$(dirname "$BIN")") on 127.0.0.1:$port, database $DB; URL in $ENV_FILE"
