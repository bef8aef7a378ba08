-- Undo a reservation whose decision was not kept (the policy rejected or trapped after
-- reserving): forget the start and the task. Freeing the slot can only make later
-- reservations conservative, never over-admit. (A bucket's TAT is left advanced: also
-- conservative.)
-- KEYS[1] the user's reserved starts, KEYS[2] the task, KEYS[3] the due index, KEYS[4] the lease set
-- ARGV[1] task id, ARGV[2] its reserved start ms (the starts entry is 'start:task id')
-- Returns 1 if the task was in the due index (queued), else 0.
local queued = redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[2])
-- A reservation without windows writes no start, and so leaves an earlier version's zset
-- of starts as it is (see reserve.lua): remove the task from whichever form is there.
local removed = redis.pcall('LREM', KEYS[1], '-1', ARGV[2] .. ':' .. ARGV[1])
if type(removed) == 'table' and removed.err then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return queued
