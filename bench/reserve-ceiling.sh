#!/usr/bin/env bash
# The ceiling Sluice is compared with: `redis-benchmark` of the decision script alone
# (`reserve.lua`, one task per call, two windows: 1 per s and 20 per min, random users of
# 10,000) against its own Redis with the settings `just bench` uses (unix socket, AOF
# everysec). Prints calls per second for `-P 1` three times, then `-P 16`. A cheaper workload
# than Sluice's: each __rand_int__ is drawn on its own (a call's keys name different users),
# and the 10,000 task ids are overwritten instead of piling up as queued tasks.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
sock="$dir/redis.sock"
trap 'redis-cli -s "$sock" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
redis-server --port 0 --unixsocket "$sock" --dir "$dir" --save '' --appendonly yes --appendfsync everysec \
    --maxmemory-policy noeviction --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
for _ in $(seq 50); do redis-cli -s "$sock" ping >/dev/null 2>&1 && break; sleep 0.1; done
sha=$(redis-cli -s "$sock" script load "$(cat host/src/store/lua/reserve.lua)")
# Keys: the user's starts, the task, due and lease shard, the user's bucket. Arguments: task
# id, user, payload, max delay (-1: none), not-before, lease ms, owner, now (0: Redis TIME),
# bucket interval (0: none), burst, 2 windows: (1, 1000 ms), (20, 60000 ms).
for pipeline in 1 1 1 16; do
    printf 'reserve.lua -P %-2s ' "$pipeline"
    redis-benchmark -s "$sock" -c 50 -n 200000 -r 10000 -P "$pipeline" -q \
        evalsha "$sha" 5 'sluice:{u__rand_int__}:starts' 'sluice:task:{t__rand_int__}' 'sluice:due:{3}' \
        'sluice:lease:{3}' 'sluice:{u__rand_int__}:tat' t__rand_int__ u__rand_int__ '{}' -1 0 30000 bench 0 0 1 \
        2 1 1000 20 60000 | tr '\r' '\n' | tail -1 | sed 's/.*60000: //'
done
