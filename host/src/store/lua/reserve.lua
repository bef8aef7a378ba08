-- Reserve the earliest start for each task of a batch and store it, atomically. A batch
-- is the reservations one worker had waiting at once; tasks are decided in order, each
-- seeing what the ones before it wrote, exactly as if each were its own script call.
-- The start ("slot") is the earliest time >= now (and >= not-before) at which every
-- window holds fewer than `limit` of the user's starts, no earlier-reserved task of
-- the user starts later (FIFO), and, with a bucket, the GCRA allows it: the bucket's
-- theoretical arrival time (TAT) minus (burst - 1) intervals. With no windows and no
-- bucket, the slot is max(now, not-before).
-- Keys: the due index (zset: task id -> run-at ms) and the lease set (zset: task id ->
-- lease expiry ms), once for the batch; then per task three: the user's reserved starts
-- (list of 'start ms:task id', oldest first), the task (hash), the user's bucket TAT
-- (string, ms). The starts are a list, not a zset: reading a zset's score makes Redis 7.0
-- format a double with %.17g, and adding one parse it (8% of Redis's instructions per
-- reservation; see bench/RESULTS.md). Starts go in in time order (FIFO: a slot is
-- never before the user's last start), so the list stays sorted.
-- Per task, 10 + 2n arguments:
--   task id, user id, payload JSON, max delay ms (-1: unbounded), not-before ms (0: none),
--   lease ms, now ms (0: Redis TIME; tests set it), bucket interval ms (0: no bucket),
--   bucket burst, window count n, then n pairs of limit, window ms.
-- After the last task, one more argument: the batch's give-up time, unix ms (0: none).
-- Past it by Redis TIME a caller in the batch has answered 503, so the whole batch is
-- refused with an error and nothing is written (see host/src/store/reserver.rs).
-- Returns status, slot ms, now ms per task: status 0 = too far (nothing written),
-- 1 = admitted (task stored and leased: running), 2 = queued (stored, in the due index),
-- 3 = failed (slot and now 0): a command on the task's keys raised an error, which names
-- data this script did not write (a malformed start entry, a key of another type) and
-- goes to Redis's log. A failure is the task's own: the batch's other tasks are decided
-- and answered as if it had not been in it, and the failed task wrote nothing (every
-- command that can fail runs before its first write; see the writes in reserve()).
-- The same error for every task, Redis refusing writes at maxmemory, refuses the batch.
-- Numbers go to redis.call as text written once with %d: Redis writes a Lua number
-- argument with %.17g (glibc's float formatting) at every call it is passed to, which
-- was about 5% of Redis's CPU under `just bench`. The other way, Lua 5.1 reads every
-- number with glibc's strtod (about 800 instructions for a 13-digit one), so arguments
-- that are usually their default ('0' now, not-before and bucket interval, '-1' max
-- delay, '1' limit) are compared as text first: the host writes integers in plain
-- decimal, so the text '0' is the only zero, and it checks that limits are at least 1
-- and delays at least 0.
local function int(x) return string.format('%d', x) end

local redis_now, redis_now_text
local function now_of(arg)
  if arg ~= '0' then return tonumber(arg), arg end
  if not redis_now then
    local t = redis.call('TIME')
    redis_now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis_now_text = int(redis_now)
  end
  return redis_now, redis_now_text
end

-- The start time of a 'start ms:task id' entry.
local function start_of(entry) return tonumber(string.match(entry, '^%d+')) end

-- Versions before this one kept a user's starts in a zset (task id -> start ms) under the
-- same key: rewrite one as a list, oldest first, keeping its expiry.
local function migrate(starts)
  local old = redis.call('ZRANGE', starts, '0', '-1', 'WITHSCORES')
  local ttl = redis.call('PTTL', starts)
  redis.call('DEL', starts)
  for i = 1, #old, 2 do
    redis.call('RPUSH', starts, int(tonumber(old[i + 1])) .. ':' .. old[i])
  end
  if ttl > 0 then redis.call('PEXPIRE', starts, ttl) end
end

-- The user's newest start entry, or false when there is none.
local function newest(starts)
  local last = redis.pcall('LINDEX', starts, '-1')
  if type(last) == 'table' and last.err then
    migrate(starts)
    last = redis.call('LINDEX', starts, '-1')
  end
  return last
end

local due, lease = KEYS[1], KEYS[2]
local give_up = ARGV[#ARGV]
if give_up ~= '0' and now_of('0') > tonumber(give_up) then
  return redis.error_reply('TIMEDOUT the reservations reached Redis after their callers gave up')
end

-- Task k's keys start at KEYS[k], its arguments at ARGV[a]; n is its window count.
local function reserve(k, a, n)
  local starts, task, bucket = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local now, now_text = now_of(ARGV[a + 6])
  local slot = now
  if ARGV[a + 4] ~= '0' then slot = math.max(now, tonumber(ARGV[a + 4])) end
  local interval, tat = 0, now
  if ARGV[a + 7] ~= '0' then
    local burst
    interval, burst = tonumber(ARGV[a + 7]), tonumber(ARGV[a + 8])
    tat = math.max(now, tonumber(redis.call('GET', bucket) or '0'))
    slot = math.max(slot, tat - (burst - 1) * interval)
  end

  -- Ranks count from the newest start, so starts that already left every window (kept
  -- until the next housekeeping below) sit at the far end and never constrain a slot.
  local max_window, last_start = 0, nil
  if n > 0 then
    local last = newest(starts)
    if last then
      -- An entry this script did not write is an error, never a user without history.
      last_start = start_of(last) or error('malformed start entry in ' .. starts)
      slot = math.max(slot, last_start)
    end
    for i = 0, n - 1 do
      local limit_text, window = ARGV[a + 10 + 2 * i], tonumber(ARGV[a + 11 + 2 * i])
      max_window = math.max(max_window, window)
      if last_start then
        local nth = last_start
        if limit_text ~= '1' then
          nth = redis.call('LINDEX', starts, '-' .. limit_text)
          nth = nth and (start_of(nth) or error('malformed start entry in ' .. starts))
        end
        if nth then slot = math.max(slot, nth + window) end
      end
    end
  end

  if ARGV[a + 3] ~= '-1' and slot - now > tonumber(ARGV[a + 3]) then
    return 0, slot, now
  end

  local slot_text = int(slot)
  -- The writes, the one that can fail first: an HSET on a task key of another type fails
  -- before anything of the task is written. (A ZADD fails only on a due index or lease
  -- set of another type, where no task can be stored at all; the task's record is then
  -- left behind.) The starts and the bucket take any data.
  -- A task's state is where it is: leased (running), in the due index (queued), or
  -- completed (the ack writes its times); the record itself never says.
  redis.call('HSET', task, 'user_id', ARGV[a + 1], 'payload', ARGV[a + 2], 'run_at', slot_text, 'created_at', now_text)
  local status = 2
  if slot <= now then
    status = 1
    redis.call('ZADD', lease, int(now + tonumber(ARGV[a + 5])), ARGV[a])
  else
    redis.call('ZADD', due, slot_text, ARGV[a])
  end
  if n > 0 then
    redis.call('RPUSH', starts, slot_text .. ':' .. ARGV[a])
    -- The list must outlive its newest start's longest window. Checked on every task, as
    -- a policy change can make the longest window longer and the history it needs must
    -- not expire on the old window's schedule; renewed only when it would, then with a
    -- longest window to spare, so a busy user's list is renewed about once per window.
    -- (A PTTL is half a PEXPIRE's cost: Redis writes no AOF entry for it.)
    local needed = slot - now + max_window
    if redis.call('PTTL', starts) < needed then
      redis.call('PEXPIRE', starts, int(needed + max_window))
    end
    -- Forget starts that left every window once per longest-window period of the user's
    -- starts, not on every task: a period holds at most its window's limit of starts, so
    -- the list stays small in between. (Only memory depends on this, never a decision.)
    -- An entry this script did not write counts as old here: it goes with the old ones.
    if last_start and math.floor(slot / max_window) > math.floor(last_start / max_window) then
      local old, horizon = 0, now - max_window
      for _, entry in ipairs(redis.call('LRANGE', starts, '0', '-1')) do
        if (start_of(entry) or horizon) > horizon then break end
        old = old + 1
      end
      if old > 0 then redis.call('LTRIM', starts, int(old), '-1') end
    end
  end
  if interval > 0 then
    local new_tat = math.max(tat, slot) + interval
    redis.call('SET', bucket, int(new_tat), 'PX', int(new_tat - now))
  end
  return status, slot, now
end

local out = {}
local a = 1
for k = 3, #KEYS, 3 do
  local n = tonumber(ARGV[a + 9])
  local ok, status, slot, now = pcall(reserve, k, a, n)
  if not ok then
    local message = type(status) == 'table' and status.err or tostring(status)
    -- At maxmemory Redis refuses a script's first write, so nothing is written yet: the
    -- whole batch is refused, as Redis is full, not this task's data wrong. (Redis 7 says
    -- 'OOM command not allowed ...', Redis 6 the same after a '@user_script: N: -'.)
    if string.find(message, 'OOM command not allowed', 1, true) then
      return redis.error_reply('OOM command not allowed when used memory > maxmemory')
    end
    redis.log(redis.LOG_WARNING, 'reserve.lua: task ' .. ARGV[a] .. ' failed: ' .. message)
    status, slot, now = 3, 0, 0
  end
  out[#out + 1] = status
  out[#out + 1] = slot
  out[#out + 1] = now
  a = a + 10 + 2 * n
end
return out
