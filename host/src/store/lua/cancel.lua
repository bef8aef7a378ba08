-- Undo a reservation whose decision was not kept (the policy rejected or trapped after
-- reserving, or its caller gave up): forget the start and the task. Freeing the slot can
-- only make later reservations conservative, never over-admit. (A bucket's TAT is left
-- advanced: also conservative.)
-- KEYS[1] the user's reserved starts, KEYS[2] the task, KEYS[3] the due index, KEYS[4] the lease set
-- ARGV[1] task id, ARGV[2] its reserved start ms (the starts entry is 'start:task id'),
-- ARGV[3] '1' if it was stored queued (in the due index), '0' if admitted (leased)
-- Returns 1 if undone. 0 if it was stored queued and has left the due index since: a
-- consumer claimed it and runs it, so it is left as it is, its start still counted (a
-- start forgotten after it happened would let the user start again too soon).
if redis.call('ZREM', KEYS[3], ARGV[1]) == 0 and ARGV[3] == '1' then
  return 0
end
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[2])
-- A reservation without windows writes no start, and so leaves an earlier version's zset
-- of starts as it is (see reserve.lua): remove the task from whichever form is there.
local removed = redis.pcall('LREM', KEYS[1], '-1', ARGV[2] .. ':' .. ARGV[1])
if type(removed) == 'table' and removed.err then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return 1
