-- Fold the due-index and lease shards of earlier versions into the one due index and
-- lease set, keeping each task's score; a no-op once done, so every worker runs it at start.
-- KEYS[1] the due index, KEYS[2] the lease set, then (due, lease) of each old shard.
-- Returns how many entries moved.
local moved = 0
for i = 3, #KEYS do
  local into = KEYS[2 - i % 2]
  local n = redis.call('ZCARD', KEYS[i])
  if n > 0 then
    redis.call('ZUNIONSTORE', into, 2, into, KEYS[i], 'AGGREGATE', 'MIN')
    redis.call('DEL', KEYS[i])
    moved = moved + n
  end
end
return moved
