-- A key's usage: counters of buckets first..last and its recent-requests log.
-- KEYS[1]: the usage base (see decide.lua). ARGV: granularity "h"|"d",
-- first bucket, last bucket, number of log entries.
-- Returns {{field, count, field, count, ...} per bucket, {log entries}}.
local base, g = KEYS[1], ARGV[1]
local buckets = {}
for idx = tonumber(ARGV[2]), tonumber(ARGV[3]) do
  buckets[#buckets + 1] = redis.call('HGETALL', base .. ':' .. g .. ':' .. idx)
end
local log = {}
local n = tonumber(ARGV[4])
if n > 0 then log = redis.call('LRANGE', base .. ':log', 0, n - 1) end
return { buckets, log }
