-- Claim due tasks from every shard: first put tasks whose lease expired (their worker
-- died) back in the due index, then move up to ARGV[1] due tasks into the lease set.
-- KEYS[2i-1], KEYS[2i] the due index and lease set of shard i
-- ARGV[1] max tasks, ARGV[2] lease ms, ARGV[3] owner, ARGV[4] task key prefix
-- (the task key is prefix .. '{' .. id .. '}')
-- Returns {now ms, next wake ms or -1, id, user id, run-at ms, id, ...}: the next wake
-- is the earliest due time or lease expiry left in any shard.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local budget = tonumber(ARGV[1])
local lease_until = now + tonumber(ARGV[2])
local out = {now, -1}
local next_wake = nil

local function task_key(id) return ARGV[4] .. '{' .. id .. '}' end
local function wake_at(at)
  if at and (next_wake == nil or at < next_wake) then next_wake = at end
end
-- The lowest score of a zset, or nil when it is empty.
local function first(key)
  return tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2])
end

for i = 1, #KEYS, 2 do
  local due, lease = KEYS[i], KEYS[i + 1]
  -- One read tells whether any lease expired and, if none did, when the next one will.
  local expiry = first(lease)
  if expiry and expiry <= now then
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', lease, '-inf', now, 'LIMIT', 0, 1000)) do
      redis.call('ZREM', lease, id)
      local run_at = redis.call('HGET', task_key(id), 'run_at')
      if run_at then
        redis.call('ZADD', due, run_at, id)
        redis.call('HSET', task_key(id), 'state', 'queued', 'owner', '')
      end
    end
    expiry = first(lease)
  end
  wake_at(expiry)
  if budget > 0 then
    -- The due tasks are the lowest ranks: take them out with one command, lease them with one.
    local ids = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, budget)
    local leases = {}
    if #ids > 0 then redis.call('ZREMRANGEBYRANK', due, 0, #ids - 1) end
    for _, id in ipairs(ids) do
      local info = redis.call('HMGET', task_key(id), 'user_id', 'run_at')
      if info[1] then
        redis.call('HSET', task_key(id), 'state', 'running', 'owner', ARGV[3])
        table.insert(leases, lease_until)
        table.insert(leases, id)
        table.insert(out, id)
        table.insert(out, info[1])
        table.insert(out, tonumber(info[2]))
        budget = budget - 1
      end
    end
    if #leases > 0 then
      redis.call('ZADD', lease, unpack(leases))
      wake_at(lease_until)
    end
  end
  wake_at(first(due))
end
if next_wake ~= nil then out[2] = next_wake end
return out
