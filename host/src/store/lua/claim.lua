-- Claim due tasks: first put tasks whose lease expired (their worker died) back in the
-- due index, then move up to ARGV[1] due tasks into the lease set. Leased is running:
-- the task record is not written (see reserve.lua).
-- Claims go on when Redis is at maxmemory: Redis refuses a command that grows memory only
-- as a script's first write, and each path here writes first with a removal (ZREM,
-- ZREMRANGEBYRANK). Keep it so, or a full Redis stops the queue (tested by
-- reliability::a_full_redis_refuses_new_tasks_and_runs_each_queued_one_once).
-- A task claimed more than ARGV[4] ms after its start (Redis or every worker was away, or
-- its worker died and its lease ran out) starts now, and its user's later starts move
-- as much later: see respace() below.
-- KEYS[1] the due index, KEYS[2] the lease set
-- ARGV[1] max tasks, ARGV[2] lease ms, ARGV[3] task key prefix
-- (the task key is prefix .. '{' .. id .. '}'), ARGV[4] lateness that respaces (ms),
-- ARGV[5] the user's starts key, with '%s' for the user id
-- Returns {now ms, next wake ms or -1, id, user id, run-at ms, id, ...}: the next wake
-- is the earliest due time or lease expiry left.
local due, lease = KEYS[1], KEYS[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local budget = tonumber(ARGV[1])
local lease_until = now + tonumber(ARGV[2])
local respace_after, starts_key = tonumber(ARGV[4]), ARGV[5]
-- Numbers passed to redis.call are written once as text (%d): see reserve.lua.
local function int(x) return string.format('%d', x) end
local now_text, lease_until_text = int(now), int(lease_until)
local out = {now, -1}

local function task_key(id) return ARGV[3] .. '{' .. id .. '}' end
-- A command on task `id`'s keys, or nil when it fails: a record (or start list) of another
-- type is data this script did not write, and a script's error would keep the ids it
-- already took out of the due index or lease set from being leased or queued again
-- (nothing rolls back). A task whose record cannot be read is dropped; each failure is
-- said in Redis's log.
local function on_task(id, ...)
  local reply = redis.pcall(...)
  if type(reply) == 'table' and reply.err then
    redis.log(redis.LOG_WARNING, 'claim.lua: task ' .. id .. ': ' .. reply.err)
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
    local run_at = on_task(id, 'HGET', task_key(id), 'run_at')
    if run_at then redis.call('ZADD', due, run_at, id) end
  end
  expiry = first(lease)
end
-- The ids of this claim's batch, taken out of the due index; those leased so far; those
-- respace() moved later, put back in the due index.
local taken, leased, moved = {}, {}, {}

-- The limits hold for the starts reserve.lua wrote, and a start that comes late would
-- bunch with the user's next ones (after a 10 s outage, ten of a 1/s user's tasks at
-- once). So task `id` of `user`, `shift` ms late, starts now, and every later start in
-- the user's list (FIFO: all reserved after it) moves `shift` ms later with it: the gaps
-- between them stay as the windows made them, and new reservations go after the moved
-- starts. A start whose task already ran or is running only moves in the list. Users
-- without a list (bucket-only policies) are not respaced.
local function respace(user, id, shift)
  local starts = string.format(starts_key, user)
  local entries = on_task(id, 'LRANGE', starts, '0', '-1') or {}
  local suffix = ':' .. id
  for j, entry in ipairs(entries) do
    if string.sub(entry, -#suffix) == suffix then
      for k = j, #entries do
        local start, other = string.match(entries[k], '^(%d+):(.+)$')
        if start then
          local at = int(tonumber(start) + shift)
          redis.call('LSET', starts, int(k - 1), at .. ':' .. other)
          if k > j and not leased[other] and (taken[other] or redis.call('ZSCORE', due, other)) then
            redis.call('ZADD', due, at, other)
            on_task(other, 'HSET', task_key(other), 'run_at', at)
            moved[other] = true
          end
        end
      end
      local ttl = redis.call('PTTL', starts)
      if ttl > 0 then redis.call('PEXPIRE', starts, int(ttl + shift)) end
      break
    end
  end
  on_task(id, 'HSET', task_key(id), 'run_at', now_text)
end

-- Likewise one read tells whether anything is due, or when it will be.
local next_due = first(due)
if budget > 0 and next_due and next_due <= now then
  -- The due tasks are the lowest ranks: take them out with one command, lease them with one.
  local ids = redis.call('ZRANGEBYSCORE', due, '-inf', now_text, 'LIMIT', '0', ARGV[1])
  redis.call('ZREMRANGEBYRANK', due, '0', int(#ids - 1))
  for _, id in ipairs(ids) do taken[id] = true end
  local leases = {}
  for _, id in ipairs(ids) do
    local info = not moved[id] and on_task(id, 'HMGET', task_key(id), 'user_id', 'run_at')
    if info and info[1] then
      local run_at = tonumber(info[2]) or now
      if now - run_at > respace_after then
        respace(info[1], id, now - run_at)
        run_at = now
      end
      leased[id] = true
      table.insert(leases, lease_until_text)
      table.insert(leases, id)
      table.insert(out, id)
      table.insert(out, info[1])
      table.insert(out, run_at)
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
