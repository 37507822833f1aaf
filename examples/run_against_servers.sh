#!/usr/bin/env bash
# Runs the protocol examples against real servers that no one here wrote, started here on
# 127.0.0.1 and stopped on exit: redis_client against redis-server, http_client and beast_client
# (if built) against nginx.
#   run_against_servers.sh BIN_DIR
# Exit 77 (skipped) if redis-server or nginx is not installed, unless CONNPOOL_REQUIRE_FAULTS=1
# (CI), where that is a failure. Every wait is bounded.
set -euo pipefail
bin=$1
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

missing() {
  echo "SKIPPED: $1 is not installed (Debian package $2)"
  if [ "${CONNPOOL_REQUIRE_FAULTS:-0}" = 1 ]; then echo "CONNPOOL_REQUIRE_FAULTS=1: failing instead"; exit 1; fi
  exit 77
}
redis=$(command -v redis-server || ls /usr/bin/redis-server 2>/dev/null || true)
nginx=$(command -v nginx || ls /usr/sbin/nginx 2>/dev/null || true)
[ -n "$redis" ] || missing redis-server redis-server
[ -n "$nginx" ] || missing nginx nginx-light

# Wait until 127.0.0.1:$1 accepts, while process $2 lives; at most 10 s.
wait_listening() {
  local i
  for i in $(seq 1 200); do
    kill -0 "$2" 2>/dev/null || return 1
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  return 1
}

# start NAME FN: FN PORT starts the server in the background and prints its pid. Tries another
# port if that one is taken. Sets $port.
start() {
  local name=$1 fn=$2 attempt pid
  for attempt in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 20000))
    pid=$($fn "$port")
    if wait_listening "$port" "$pid"; then pids+=("$pid"); echo "$name listening on 127.0.0.1:$port"; return 0; fi
    kill -9 "$pid" 2>/dev/null || true
  done
  echo "could not start $name"; cat "$work"/*.log "$work"/*.out "$work"/nginx/*.log 2>/dev/null || true
  return 1
}

start_redis() {
  "$redis" --port "$1" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" --logfile "$work/redis.log" \
    >"$work/redis.out" 2>&1 </dev/null &
  echo $!
}
start_nginx() {
  mkdir -p "$work/nginx"
  cat >"$work/nginx/nginx.conf" <<CONF
daemon off;
master_process off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  keepalive_timeout 30s;
  keepalive_requests 50;  # every 50th response says "Connection: close"
  server {
    listen 127.0.0.1:$1;
    location / { default_type text/plain; return 200 "hello from nginx\n"; }
  }
}
CONF
  "$nginx" -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf" \
    >"$work/nginx.out" 2>&1 </dev/null &
  echo $!
}

start redis-server start_redis
redis_port=$port
start nginx start_nginx
nginx_port=$port

run() {  # name, args...: runs the example with a 60 s bound
  echo "== $1 =="
  local rc=0
  timeout 60 "$bin/$1" "${@:2}" || rc=$?
  if [ "$rc" = 77 ]; then echo "($1 skipped itself)"; return 0; fi
  [ "$rc" = 0 ] || { echo "$1 failed (exit $rc)"; return 1; }
}
status=0
run redis_client 127.0.0.1 "$redis_port" || status=1
run http_client 127.0.0.1 "$nginx_port" 400 || status=1
if [ -x "$bin/beast_client" ]; then run beast_client 127.0.0.1 "$nginx_port" 400 || status=1; fi
exit $status
