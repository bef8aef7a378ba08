-- Fold the due-index and lease shards of versions before 6a22c37 into the one due index
-- and lease set, keeping each task's score. One EXISTS when there is nothing to move, so
-- workers run it at start and then now and then.
-- KEYS[1] the due index, KEYS[2] the lease set, then the n old due shards, then the n
-- old lease shards. ARGV[1] n. Returns how many entries moved.
local n = tonumber(ARGV[1])
if redis.call('EXISTS', unpack(KEYS, 3)) == 0 then return 0 end
local moved = 0
for kind = 1, 2 do
  local into = KEYS[kind]
  local shards = {unpack(KEYS, 3 + (kind - 1) * n, 2 + kind * n)}
  for _, key in ipairs(shards) do moved = moved + redis.call('ZCARD', key) end
  local args = {into, n + 1, into, unpack(shards)}
  table.insert(args, 'AGGREGATE')
  table.insert(args, 'MIN')
  redis.call('ZUNIONSTORE', unpack(args))
  redis.call('DEL', unpack(shards))
end
return moved
