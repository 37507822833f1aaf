#!/usr/bin/env bash
# Runs the protocol examples against real servers that no one here wrote, started here on
# 127.0.0.1 and stopped on exit: redis_client against redis-server, http_client and beast_client
# (if built) against nginx; metrics_server against nginx, scraped with curl and checked with
# promtool (Debian's prometheus package).
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
[ -n "$nginx" ] || missing nginx nginx

# ask PORT REQUEST: send REQUEST to 127.0.0.1:PORT, print what comes back within 2 s.
ask() {
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"; printf "%b" "$2" >&3; timeout 1 cat <&3' _ "$1" "$2" 2>/dev/null || true
}
# The server we started answers there: Redis a PING, nginx our page. Another program on the port
# (it was taken) answers otherwise.
is_redis() { ask "$1" 'PING\r\n' | grep -q '^+PONG'; }
is_nginx() { ask "$1" 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' | grep -q 'hello from nginx'; }

run_redis() {
  exec "$redis" --port "$1" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" --logfile "$work/redis.log"
}
run_nginx() {
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
  keepalive_requests 50;  # every 50th response on a connection says "Connection: close"
  server {
    listen 127.0.0.1:$1;
    location / { default_type text/plain; return 200 "hello from nginx\n"; }
  }
}
CONF
  exec "$nginx" -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf"
}

# start NAME: runs run_NAME PORT as a child, on a random port, until is_NAME PORT says it is ours
# (at most 10 s per port, 5 ports). Sets $port.
start() {
  local name=$1 attempt i pid
  for attempt in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 20000))
    "run_$1" "$port" >"$work/$name.out" 2>&1 </dev/null &
    pid=$!
    for i in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      if "is_$name" "$port"; then pids+=("$pid"); echo "$name listening on 127.0.0.1:$port"; return 0; fi
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  echo "could not start $name"; cat "$work"/*.out "$work"/*.log "$work"/nginx/*.log 2>/dev/null || true
  return 1
}

start redis
redis_port=$port
start nginx
nginx_port=$port

# run NAME ARGS...: runs the example with a 60 s bound; its output is in $work/NAME.txt.
run() {
  echo "== $1 =="
  local rc=0
  timeout 60 "$bin/$1" "${@:2}" >"$work/$1.txt" 2>&1 || rc=$?
  cat "$work/$1.txt"
  if [ "$rc" = 77 ]; then echo "($1 skipped itself)"; return 0; fi
  [ "$rc" = 0 ] || { echo "$1 failed (exit $rc)"; return 1; }
}
# discards NAME: the example's report shows nginx's "Connection: close" responses discarded (400
# requests over at most 4 connections, keepalive_requests 50: at least 4 of them).
discards() {
  local n
  n=$(sed -n 's/.* \([0-9][0-9]*\) \(said Connection: close\|without keep-alive\).*/\1/p' "$work/$1.txt")
  if [ "${n:-0}" -ge 4 ]; then return 0; fi
  echo "$1: expected nginx's Connection: close responses to be discarded, saw ${n:-none}"
  return 1
}
status=0
run redis_client 127.0.0.1 "$redis_port" || status=1
run http_client 127.0.0.1 "$nginx_port" 400 && discards http_client || status=1
# metrics_server: 200 requests to nginx through a pool, then /metrics, scraped with curl; the values
# must agree with what the example did, and promtool (Debian's prometheus) must accept the format.
metrics() {
  echo "== metrics_server =="
  local curl promtool line url pid out=$work/metrics.txt i
  curl=$(command -v curl || true)
  promtool=$(command -v promtool || true)
  if [ -z "$curl" ] || [ -z "$promtool" ]; then
    echo "SKIPPED: metrics_server needs curl and promtool (Debian packages curl, prometheus)"
    [ "${CONNPOOL_REQUIRE_FAULTS:-0}" != 1 ] || { echo "CONNPOOL_REQUIRE_FAULTS=1: failing instead"; return 1; }
    return 0
  fi
  timeout 60 "$bin/metrics_server" 127.0.0.1 "$nginx_port" 200 50 >"$work/metrics_server.txt" 2>&1 &
  pid=$!
  pids+=("$pid")
  line=""
  for i in $(seq 1 100); do  # its first line, within 10 s
    line=$(head -n 1 "$work/metrics_server.txt" 2>/dev/null || true)
    [ -z "$line" ] || break
    sleep 0.1
  done
  echo "$line"
  url=${line##* }
  case "$url" in http://127.0.0.1:*/metrics) ;; *) echo "metrics_server did not start"; cat "$work/metrics_server.txt"; return 1 ;; esac
  "$curl" -sf --max-time 10 "$url" -o "$out" || { echo "curl failed"; return 1; }
  local closed
  closed=$(sed -n 's/.* closed_by_server \([0-9]*\) .*/\1/p' <<<"$line")
  value() { awk -v s="$1" 'index($0, s) == 1 { print $NF }' "$out"; }
  local ep="127.0.0.1:$nginx_port" created reused count discarded
  created=$(value "connpool_connections_created_total{pool=\"backend\",endpoint=\"$ep\"}")
  reused=$(value "connpool_connections_reused_total{pool=\"backend\",endpoint=\"$ep\"}")
  count=$(value "connpool_acquire_seconds_count{pool=\"backend\"}")
  discarded=$(value "connpool_connections_closed_total{pool=\"backend\",endpoint=\"$ep\",reason=\"discarded\"}")
  echo "scraped: created $created reused $reused acquires timed $count discarded $discarded (server closed $closed)"
  if [ -z "$created" ] || [ -z "$reused" ] || [ $((created + reused)) != 200 ] || [ "$count" != 200 ] ||
    [ "$discarded" != "$closed" ] || [ "${closed:-0}" -lt 3 ]; then
    echo "metrics disagree with what the example did"; head -40 "$out"; return 1
  fi
  "$promtool" check metrics <"$out" || { echo "promtool rejected the exposition"; return 1; }
  echo "promtool: the exposition is valid"
  "$curl" -sf --max-time 5 "${url%/metrics}/quit" >/dev/null || true
  wait "$pid" || { echo "metrics_server failed"; cat "$work/metrics_server.txt"; return 1; }
}
metrics || status=1
if [ -x "$bin/beast_client" ]; then
  run beast_client 127.0.0.1 "$nginx_port" 400 && { grep -q "skipped\|no C++20" "$work/beast_client.txt" || discards beast_client; } || status=1
fi
exit $status
