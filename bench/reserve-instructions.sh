#!/usr/bin/env bash
# Redis instructions per `reserve.lua` call, counted by callgrind: unlike throughput on a
# shared VM, the count repeats run to run, so it can compare two versions of a script.
# Usage: bench/reserve-instructions.sh [script.lua ...]   (default: the host's reserve.lua)
# Each script runs CALLS calls (default 20000) from 50 connections over USERS users
# (default 500: about 40 starts per user by the end, the steady state of a busy user), on
# a fresh redis-server under callgrind configured by redis.conf; a run of an empty script
# with the same keys and arguments gives the fixed cost (protocol, EVALSHA), subtracted.
# Needs valgrind and redis-benchmark (Debian: valgrind, redis-tools). About a minute a script.
set -euo pipefail
shopt -s inherit_errexit
root="$(cd "$(dirname "$0")/.." && pwd)"
calls="${CALLS:-20000}" users="${USERS:-500}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
[ $# -gt 0 ] || set -- "$root/host/src/store/lua/reserve.lua"
echo 'return 1' > "$work/empty.lua"

# Instructions redis-server executed from start to shutdown, having served `calls` calls.
count() {
    local script="$1" n="$2" dir="$work/run"
    rm -rf "$dir" && mkdir "$dir"
    valgrind --tool=callgrind --callgrind-out-file="$dir/out" redis-server "$root/redis.conf" \
        --port 0 --unixsocket "$dir/s.sock" --dir "$dir" >"$dir/log" 2>&1 &
    local pid=$!
    for _ in $(seq 200); do redis-cli -s "$dir/s.sock" ping >/dev/null 2>&1 && break; sleep 0.2; done
    local sha
    sha=$(redis-cli -s "$dir/s.sock" script load "$(cat "$script")")
    # The bench's ceiling call: 1 per s and 20 per min, a new task per call.
    redis-benchmark -s "$dir/s.sock" -c 50 -n "$n" -r "$users" -P 1 -q evalsha "$sha" 5 \
        sluice:due sluice:lease 'sluice:{u__rand_int__}:starts' 'sluice:task:{t__rand_int__-__rand_int__}' \
        'sluice:{u__rand_int__}:tat' t__rand_int__-__rand_int__ u__rand_int__ '{}' -1 0 30000 0 0 1 2 1 1000 20 60000 0 \
        >/dev/null
    # A script that fails on every call would look cheap: count only clean runs. reserve.lua
    # answers a task that failed on its keys with a status, not an error: a clean run of a
    # storing script stored most of its (random, rarely repeated) task ids.
    local errors stored
    errors=$(redis-cli -s "$dir/s.sock" info stats | tr -d '\r' | sed -n 's/^total_error_replies://p')
    stored=$(redis-cli -s "$dir/s.sock" eval "return #redis.call('KEYS', 'sluice:task:*')" 0)
    redis-cli -s "$dir/s.sock" shutdown nosave >/dev/null 2>&1 || true
    wait "$pid" || true
    if [ "$errors" != 0 ]; then
        echo "$script: $errors error replies (see $dir/log)" >&2
        exit 1
    fi
    if [ "$script" != "$work/empty.lua" ] && [ "$stored" -lt $(( n / 2 )) ]; then
        echo "$script: only $stored tasks stored by $n calls (see $dir/log)" >&2
        exit 1
    fi
    local total
    total=$(grep -m1 -E '^(summary|totals):' "$dir/out" | awk '{print $2}')
    [ -n "$total" ] || { echo "no instruction count from callgrind for $script" >&2; exit 1; }
    echo "$total"
}

fixed=$(( $(count "$work/empty.lua" "$calls") ))
for script in "$@"; do
    total=$(count "$script" "$calls")
    echo "$script: $(( (total - fixed) / calls )) instructions per call beyond an empty script's $(( fixed / calls ))"
done
