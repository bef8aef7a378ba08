-- Claim due tasks: first put tasks whose lease expired (their worker died) back in the
-- due index, then move up to ARGV[1] due tasks into the lease set. Leased is running:
-- the task record is not written (see reserve.lua).
-- Claims go on when Redis is at maxmemory: Redis refuses a command that grows memory only
-- as a script's first write, and each path here writes first with a removal (ZREM,
-- ZREMRANGEBYRANK). Keep it so, or a full Redis stops the queue (tested by
-- reliability::a_full_redis_refuses_new_tasks_and_runs_each_queued_one_once).
-- KEYS[1] the due index, KEYS[2] the lease set
-- ARGV[1] max tasks, ARGV[2] lease ms, ARGV[3] task key prefix
-- (the task key is prefix .. '{' .. id .. '}')
-- Returns {now ms, next wake ms or -1, id, user id, run-at ms, id, ...}: the next wake
-- is the earliest due time or lease expiry left.
local due, lease = KEYS[1], KEYS[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local budget = tonumber(ARGV[1])
local lease_until = now + tonumber(ARGV[2])
-- Numbers passed to redis.call are written once as text (%d): see reserve.lua.
local now_text, lease_until_text = string.format('%d', now), string.format('%d', lease_until)
local out = {now, -1}

local function task_key(id) return ARGV[3] .. '{' .. id .. '}' end
-- A command on a task's record, or nil when it fails: a record of another type is data
-- this script did not write, and a script's error would keep the ids it already took out
-- of the due index or lease set from being leased or queued again (nothing rolls back).
-- Such a task is dropped, and said so in Redis's log.
local function read_task(id, ...)
  local reply = redis.pcall(...)
  if type(reply) == 'table' and reply.err then
    redis.log(redis.LOG_WARNING, 'claim.lua: task ' .. id .. ' dropped: ' .. reply.err)
    return nil
  end
  return reply
end
-- The lowest score of a zset, or nil when it is empty.
local function first(key)
  return tonumber(redis.call('ZRANGE', key, '0', '0', 'WITHSCORES')[2])
end

-- One read tells whether any lease expired and, if none did, when the next one will.
local expiry = first(lease)
if expiry and expiry <= now then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', lease, '-inf', now_text, 'LIMIT', '0', '1000')) do
    redis.call('ZREM', lease, id)
    local run_at = read_task(id, 'HGET', task_key(id), 'run_at')
    if run_at then redis.call('ZADD', due, run_at, id) end
  end
  expiry = first(lease)
end
-- Likewise one read tells whether anything is due, or when it will be.
local next_due = first(due)
if budget > 0 and next_due and next_due <= now then
  -- The due tasks are the lowest ranks: take them out with one command, lease them with one.
  local ids = redis.call('ZRANGEBYSCORE', due, '-inf', now_text, 'LIMIT', '0', ARGV[1])
  redis.call('ZREMRANGEBYRANK', due, '0', string.format('%d', #ids - 1))
  local leases = {}
  for _, id in ipairs(ids) do
    local info = read_task(id, 'HMGET', task_key(id), 'user_id', 'run_at')
    if info and info[1] then
      table.insert(leases, lease_until_text)
      table.insert(leases, id)
      table.insert(out, id)
      table.insert(out, info[1])
      table.insert(out, tonumber(info[2]))
    end
  end
  if #leases > 0 then
    redis.call('ZADD', lease, unpack(leases))
    expiry = math.min(expiry or lease_until, lease_until)
  end
  next_due = first(due)
end
local next_wake = math.min(expiry or math.huge, next_due or math.huge)
if next_wake ~= math.huge then out[2] = next_wake end
return out
