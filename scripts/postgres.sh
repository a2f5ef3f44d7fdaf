#!/usr/bin/env bash
# The test bed's PostgreSQL server: a cluster of its own, made and started by the tests
# (nothing runs when CI starts), never the machine's own cluster.
#
#   ./scripts/postgres.sh up       # make the cluster once, start it, print nothing else
#   ./scripts/postgres.sh url      # the URL of the snapshotd role's database (no password)
#   ./scripts/postgres.sh admin    # the URL the tests use to make and drop databases
#   ./scripts/postgres.sh password # the file holding the snapshotd role's password
#   ./scripts/postgres.sh ca       # the CA certificate of the server's TLS certificate
#   ./scripts/postgres.sh status   # exit 0 when it answers
#   ./scripts/postgres.sh stop     # stop the server (its postmaster pid, pg_ctl stop)
#   ./scripts/postgres.sh start    # start it again (a fault test stops and starts it)
#   ./scripts/postgres.sh down     # stop it and remove the cluster
#
# Debian 12's postgresql-15 (scripts/host-setup.sh installs it).  The cluster lives in
# $SNAPSHOTD_TEST_PG_DIR (default /var/tmp/snapshotd-test-pg), owned by the postgres
# user, at port $SNAPSHOTD_TEST_PG_PORT (default 54329) on every address (the second
# host's veth, 10.213.7.1, comes and goes with scripts/host2.sh) and on a Unix socket in
# the cluster's folder; pg_hba.conf admits TCP only from 127.0.0.1 and the veth's /30,
# with a password (scram-sha-256), and the socket only to the postgres user.  TLS is on
# (a CA made here: DIR/ca.crt); a client that asks for it gets it, the others do not.  Roles: snapshotd (LOGIN, a random password in
# DIR/snapshotd.password, 0600) and snapshotd_admin (CREATEDB CREATEROLE, the same
# password: the tests' own databases and roles).  Safe to run at the same time from several test workers
# (flock on DIR.lock).  Must run as root.
set -euo pipefail

DIR=${SNAPSHOTD_TEST_PG_DIR:-/var/tmp/snapshotd-test-pg}
PORT=${SNAPSHOTD_TEST_PG_PORT:-54329}
BIN=/usr/lib/postgresql/15/bin
DATA=$DIR/data
PASSWORD=$DIR/snapshotd.password
LOGFILE=$DIR/server.log

log() { printf 'postgres: %s\n' "$*" >&2; }
die() { printf 'postgres: error: %s\n' "$*" >&2; exit 1; }
as_postgres() { runuser -u postgres -- "$@"; }
psql_admin() { as_postgres "$BIN/psql" -X -q -h "$DIR" -p "$PORT" -d postgres "$@"; }

answers() { as_postgres "$BIN/pg_isready" -q -h "$DIR" -p "$PORT" >/dev/null 2>&1; }

make_cluster() {
    [ -x "$BIN/initdb" ] || die "$BIN/initdb not found: install postgresql-15 (scripts/host-setup.sh)"
    log "making a cluster in $DATA"
    mkdir -p "$DIR"
    chown postgres: "$DIR"
    chmod 0700 "$DIR"
    umask 077
    head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$PASSWORD.new"
    chmod 0600 "$PASSWORD.new"
    # TLS: a CA of the test bed's own and a server certificate for the addresses the
    # hosts use; clients choose with the URL's sslmode (verify-full and sslrootcert=CA).
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=snapshotd test CA" \
        -keyout "$DIR/ca.key" -out "$DIR/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$DIR/server.key" -out "$DIR/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,IP:10.213.7.1\n' >"$DIR/san.ext"
    openssl x509 -req -in "$DIR/server.csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" \
        -CAcreateserial -days 3650 -extfile "$DIR/san.ext" -out "$DIR/server.crt" 2>/dev/null
    chown postgres: "$DIR/server.key" "$DIR/server.crt"
    chmod 0644 "$DIR/ca.crt"
    as_postgres "$BIN/initdb" -D "$DATA" -A peer --auth-host=scram-sha-256 -U postgres \
        >/dev/null
    cat >>"$DATA/postgresql.conf" <<EOF
port = $PORT
unix_socket_directories = '$DIR'
listen_addresses = '*'
ssl = on
ssl_cert_file = '$DIR/server.crt'
ssl_key_file = '$DIR/server.key'
fsync = on
log_min_messages = warning
EOF
    cat >"$DATA/pg_hba.conf" <<EOF
local all postgres peer
host all all 127.0.0.1/32 scram-sha-256
host all all 10.213.7.0/30 scram-sha-256
EOF
    start_server
    local secret
    secret=$(cat "$PASSWORD.new")
    psql_admin -v ON_ERROR_STOP=1 <<EOF
CREATE ROLE snapshotd LOGIN PASSWORD '$secret';
CREATE ROLE snapshotd_admin LOGIN CREATEDB CREATEROLE PASSWORD '$secret';
GRANT snapshotd TO snapshotd_admin;
CREATE DATABASE snapshotd OWNER snapshotd;
EOF
    mv "$PASSWORD.new" "$PASSWORD"
}

start_server() {
    answers && return 0
    # A cluster left by a killed run has a stale postmaster.pid: pg_ctl sees its pid is
    # gone and starts anyway.  9>&-: the server must not inherit the flock.
    as_postgres "$BIN/pg_ctl" -D "$DATA" -l "$LOGFILE" -w -t 60 start >/dev/null 9>&- ||
        { tail -n 20 "$LOGFILE" >&2; die "the server did not start (log: $LOGFILE)"; }
}

stop_server() {
    [ -f "$DATA/postmaster.pid" ] || return 0
    as_postgres "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null || true
}

[ "$(id -u)" -eq 0 ] || die "must run as root"
mkdir -p "$(dirname "$DIR")"
exec 9>"$DIR.lock"
flock 9

case "${1:-}" in
up)
    if [ -f "$PASSWORD" ] && [ -d "$DATA" ]; then
        start_server
    else
        rm -rf "$DIR"
        make_cluster
    fi
    ;;
start) start_server ;;
stop) stop_server ;;
status) answers ;;
url) echo "postgresql://snapshotd@127.0.0.1:$PORT/snapshotd" ;;
admin) echo "postgresql://snapshotd_admin@127.0.0.1:$PORT/postgres" ;;
password) echo "$PASSWORD" ;;
ca) echo "$DIR/ca.crt" ;;
down)
    stop_server
    rm -rf "$DIR"
    ;;
*)
    sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
