-- Read a task's state in one atomic step: whether it holds a lease, whether it is in the
-- due index, and its record. A script rather than a MULTI: at maxmemory Redis refuses
-- every command queued in a MULTI, reads too, but runs a script that only reads.
-- KEYS[1] the lease set, KEYS[2] the due index, KEYS[3] the task
-- ARGV[1] task id
-- Returns {1 if leased else 0, 1 if due else 0, {field, value, ...}}.
local function has(key) return redis.call('ZSCORE', key, ARGV[1]) and 1 or 0 end
return {has(KEYS[1]), has(KEYS[2]), redis.call('HGETALL', KEYS[3])}
