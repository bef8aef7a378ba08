-- Record that a task ran and was logged: end its lease, mark it completed, let it expire.
-- KEYS[1] the task, KEYS[2] its lease shard
-- ARGV[1] task id, ARGV[2] lease owner, ARGV[3] started_at ms, ARGV[4] completed_at ms,
-- ARGV[5] time to keep the completed task, ms
-- Returns 1, or 0 if the owner no longer held the lease (it expired and the task was
-- claimed again, so it may run twice: the at-least-once window).
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], 'owner')
redis.call('HSET', KEYS[1], 'state', 'completed', 'started_at', ARGV[3], 'completed_at', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
