-- Acknowledge run tasks when Redis is full. The usual acknowledgement is a MULTI/EXEC
-- (Store::ack); at maxmemory Redis refuses every command queued in a MULTI and aborts the
-- transaction, so every running task would keep its lease and run again each time the
-- lease expired. Redis refuses a script a command that grows memory only while the script
-- has called no write command yet, whatever that command changed (claim.lua relies on this
-- too), and this one calls ZREM first: each task grows by its two times, and its record
-- then expires. (Redis 7's `allow-oom` flag would allow even a first write, but a flagged
-- script needs Redis 7.)
-- KEYS[1] the lease set
-- ARGV[1] task key prefix (the task key is prefix .. '{' .. id .. '}'), ARGV[2] keep ms,
-- then per task: id, started_at ms, completed_at ms
-- Returns per task 1 if its lease entry was still there, else 0 (as ZREM).
local removed = {}
for i = 3, #ARGV, 3 do
  local id = ARGV[i]
  local key = ARGV[1] .. '{' .. id .. '}'
  table.insert(removed, redis.call('ZREM', KEYS[1], id))
  redis.call('HSET', key, 'started_at', ARGV[i + 1], 'completed_at', ARGV[i + 2])
  redis.call('PEXPIRE', key, ARGV[2])
end
return removed
