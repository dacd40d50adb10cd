#!/usr/bin/env bash
# Makes sure PostgreSQL, Redis and RabbitMQ run on their standard local ports, installing
# them from Debian's packages when they are missing. Idempotent: services already up are
# left alone. Used by the test and demo commands and by CI.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 90); do
    port_open "$port" && return 0
    sleep 1
  done
  echo "services: $name did not open port $port within 90 s" >&2
  return 1
}

missing=()
command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server)
if [ ${#missing[@]} -gt 0 ]; then
  echo "services: installing ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

if ! port_open 5432; then
  echo "services: starting PostgreSQL"
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start
  wait_port 5432 PostgreSQL
fi

# The tests and the demo connect as postgres@127.0.0.1 to the database `test` without a
# password. A fresh Debian cluster asks loopback clients for one: on a machine where that
# fails, trust loopback connections (a development machine's setting) and create `test`.
if ! psql -h 127.0.0.1 -U postgres -d test -Atqc "SELECT 1" >/dev/null 2>&1; then
  echo "services: letting loopback clients into PostgreSQL and creating the database test"
  hba=$(as_root su postgres -c "psql -Atqc 'SHOW hba_file'")
  if ! as_root grep -q "^host all postgres 127.0.0.1/32 trust" "$hba"; then
    as_root sed -i "1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust" "$hba"
    as_root su postgres -c "psql -Atqc 'SELECT pg_reload_conf()'" >/dev/null
  fi
  as_root su postgres -c "psql -Atqc \"SELECT 1 FROM pg_database WHERE datname = 'test'\"" | grep -q 1 ||
    as_root su postgres -c "createdb test"
fi

if ! port_open 6379; then
  echo "services: starting Redis"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port 6379 Redis
fi

if ! port_open 5672; then
  echo "services: starting RabbitMQ"
  as_root rabbitmq-server -detached
  wait_port 5672 RabbitMQ
fi
echo "services: PostgreSQL, Redis and RabbitMQ are up"
