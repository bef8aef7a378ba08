-- Reserve the earliest start for one task of one user and store the task, atomically.
-- The start ("slot") is the earliest time >= now (and >= not-before) at which every
-- window holds fewer than `limit` of the user's starts, no earlier-reserved task of
-- the user starts later (FIFO), and, with a bucket, the GCRA allows it: the bucket's
-- theoretical arrival time (TAT) minus (burst - 1) intervals. With no windows and no
-- bucket, the slot is max(now, not-before).
-- KEYS[1] the user's reserved starts (zset: task id -> start ms)
-- KEYS[2] the task (hash)
-- KEYS[3] the due index shard of the user (zset: task id -> run-at ms)
-- KEYS[4] the lease shard of the user (zset: task id -> lease expiry ms)
-- KEYS[5] the user's bucket TAT (string, ms)
-- ARGV[1] task id, ARGV[2] user id, ARGV[3] payload JSON
-- ARGV[4] max delay ms (-1: unbounded), ARGV[5] not-before ms (0: none)
-- ARGV[6] lease ms, ARGV[7] lease owner, ARGV[8] now ms (0: Redis TIME; tests set it)
-- ARGV[9] bucket interval ms (0: no bucket), ARGV[10] bucket burst
-- ARGV[11] window count n, ARGV[12..11+2n] pairs of limit, window ms
-- Returns {status, slot ms, now ms}: status 0 = too far (nothing written),
-- 1 = admitted (task leased to the owner, state running), 2 = queued.
local now = tonumber(ARGV[8])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local n = tonumber(ARGV[11])
local slot = math.max(now, tonumber(ARGV[5]))
local interval, burst = tonumber(ARGV[9]), tonumber(ARGV[10])
local tat = now
if interval > 0 then
  tat = math.max(now, tonumber(redis.call('GET', KEYS[5]) or '0'))
  slot = math.max(slot, tat - (burst - 1) * interval)
end

local max_window = 0
for i = 0, n - 1 do
  max_window = math.max(max_window, tonumber(ARGV[13 + 2 * i]))
end
if n > 0 then
  -- Starts that left the longest window can no longer constrain a slot >= now.
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - max_window)
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if last[2] then slot = math.max(slot, tonumber(last[2])) end
  for i = 0, n - 1 do
    local limit = tonumber(ARGV[12 + 2 * i])
    local nth = redis.call('ZRANGE', KEYS[1], -limit, -limit, 'WITHSCORES')
    if nth[2] then slot = math.max(slot, tonumber(nth[2]) + tonumber(ARGV[13 + 2 * i])) end
  end
end

local max_delay = tonumber(ARGV[4])
if max_delay >= 0 and slot - now > max_delay then
  return {0, slot, now}
end

if n > 0 then
  redis.call('ZADD', KEYS[1], slot, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], slot - now + max_window)
end
if interval > 0 then
  local new_tat = math.max(tat, slot) + interval
  redis.call('SET', KEYS[5], new_tat, 'PX', new_tat - now)
end
if slot <= now then
  redis.call('HSET', KEYS[2], 'user_id', ARGV[2], 'payload', ARGV[3], 'run_at', slot, 'created_at', now,
    'state', 'running', 'owner', ARGV[7])
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[6]), ARGV[1])
  return {1, slot, now}
end
redis.call('HSET', KEYS[2], 'user_id', ARGV[2], 'payload', ARGV[3], 'run_at', slot, 'created_at', now,
  'state', 'queued')
redis.call('ZADD', KEYS[3], slot, ARGV[1])
return {2, slot, now}
