-- Records a batch of validations of one key that one replica gathered in
-- the background (validations that had no limit or quota to decide, so
-- they cost the caller no round trip). Same counters and log as decide.lua,
-- on the Redis clock at the time of the flush.
--
-- KEYS[1]: the key's usage base.
-- ARGV: hourly ttl s, daily ttl s, log length, log ttl s, number of codes,
--   then code and count pairs, then number of log entries, then per entry
--   endpoint, method, ip, user agent, code, age in ms (oldest first).
local floor = math.floor
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
local secs = floor(now_ms / 1000)
local base = KEYS[1]
local hour = base .. ':h:' .. floor(secs / 3600)
local day = base .. ':d:' .. floor(secs / 86400)

local a = 6
local codes = tonumber(ARGV[5])
for _ = 1, codes do
  redis.call('HINCRBY', hour, ARGV[a], ARGV[a + 1])
  redis.call('HINCRBY', day, ARGV[a], ARGV[a + 1])
  a = a + 2
end
if codes > 0 then
  redis.call('EXPIRE', hour, tonumber(ARGV[1]))
  redis.call('EXPIRE', day, tonumber(ARGV[2]))
end

local entries = tonumber(ARGV[a])
a = a + 1
local log = base .. ':log'
for _ = 1, entries do
  local entry = cjson.encode({ e = ARGV[a], m = ARGV[a + 1], i = ARGV[a + 2], u = ARGV[a + 3], c = ARGV[a + 4], t = now_ms - tonumber(ARGV[a + 5]) })
  redis.call('LPUSH', log, entry)
  a = a + 6
end
if entries > 0 then
  redis.call('LTRIM', log, 0, tonumber(ARGV[3]) - 1)
  redis.call('EXPIRE', log, tonumber(ARGV[4]))
end
return entries
