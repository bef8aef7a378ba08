-- Undo a reservation whose decision was not kept (the policy rejected or trapped after
-- reserving, or its caller gave up): forget the start and the task. Freeing the slot can
-- only make later reservations conservative, never over-admit. (A bucket's TAT is left
-- advanced: also conservative.)
-- KEYS[1] the user's reserved starts, KEYS[2] the task, KEYS[3] the due index, KEYS[4] the lease set
-- ARGV[1] task id, ARGV[2] its reserved start ms (the starts entry is 'start:task id'),
-- ARGV[3] '1' if it was stored queued (in the due index), '0' if admitted (leased), '?'
-- if the reservation's answer was lost: its record then says whether it was stored, with
-- which start (ARGV[2] is not read), and how (admitted exactly when its start is its
-- creation time); ARGV[4] the lease ms the reservation was made with.
-- Returns 1 if undone. 0 if a consumer runs or ran the task: queued, it has left the due
-- index since; admitted, its lease ran out (its worker stalled, or Redis was away) and a
-- consumer has claimed it again, or already run it. It is then left as it is, its start
-- still counted (a start forgotten after it happened would let the user start again too
-- soon). 2 ('?' only) if nothing was stored.
local slot, queued = ARGV[2], ARGV[3]
if queued == '?' then
  local record = redis.pcall('HMGET', KEYS[2], 'run_at', 'created_at')
  if record.err or not record[1] then return 2 end
  slot, queued = record[1], record[1] == record[2] and '0' or '1'
end
if redis.call('ZREM', KEYS[3], ARGV[1]) == 0 then
  if queued == '1' then return 0 end
  -- Admitted at its start: its own lease ends a lease after it.
  local until_ms = redis.call('ZSCORE', KEYS[4], ARGV[1])
  if until_ms and tonumber(until_ms) ~= tonumber(slot) + tonumber(ARGV[4]) then return 0 end
  if not until_ms and redis.call('HEXISTS', KEYS[2], 'completed_at') == 1 then return 0 end
end
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[2])
-- A reservation without windows writes no start, and so leaves an earlier version's zset
-- of starts as it is (see reserve.lua): remove the task from whichever form is there.
local removed = redis.pcall('LREM', KEYS[1], '-1', slot .. ':' .. ARGV[1])
if type(removed) == 'table' and removed.err then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return 1
