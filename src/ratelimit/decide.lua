-- One limiter decision, atomically, on the Redis server's clock: every limit
-- all-or-nothing, and the usage quota. (Usage counters and the recent-requests
-- log are gathered by the replica and written by usage_batch.lua.) Mirrors
-- src/ratelimit/algorithms.rs and quota.rs; keep them in step.
--
-- KEYS: one per limit, then the quota key (if ARGV says there is a quota).
-- They share one {hash tag}, so on a cluster they live in one slot.
--
-- ARGV: cost, charge (1 or 0: peek only), number of limits n,
--   then n x (algorithm "s"|"f"|"t", limit, window in microseconds),
--   then has_quota, version, seed, refill_amount, refill_interval (0 none, 1 day, 2 month),
--   amount to add to the balance (UpdateKey's add_to_quota; 0 otherwise).
-- Returns: {verdict (0 admitted, 1 rate limited, 2 quota exceeded, 3 not charged),
--   now in microseconds, quota balance (-1 without a quota),
--   then n x (allowed, remaining, reset_at us, retry_after us)}.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local cost = tonumber(ARGV[1])
local charge = ARGV[2] == '1'
local n = tonumber(ARGV[3])
local a = 4

local function ceil(x) return math.ceil(x) end
local function floor(x) return math.floor(x) end

local function fixed_window(key, limit, w)
  local idx = floor(now / w)
  local s = redis.call('HMGET', key, 'w', 'c')
  local count = 0
  if tonumber(s[1]) == idx then count = tonumber(s[2]) end
  local allowed = count + cost <= limit
  local after = count
  if allowed then after = count + cost end
  local reset = (idx + 1) * w
  local retry = 0
  if not allowed then retry = reset - now end
  local commit = function()
    redis.call('HSET', key, 'w', idx, 'c', after)
    redis.call('PEXPIRE', key, ceil((reset - now) / 1000))
  end
  return allowed, math.max(limit - after, 0), reset, retry, commit
end

local function sliding_window(key, limit, w)
  local idx = floor(now / w)
  local start = idx * w
  local elapsed = now - start
  local s = redis.call('HMGET', key, 'w', 'c', 'p')
  local stored = tonumber(s[1])
  local cur, prev = 0, 0
  if stored == idx then
    cur, prev = tonumber(s[2]), tonumber(s[3])
  elseif stored == idx - 1 then
    prev = tonumber(s[2])
  end
  local weighted = ceil(prev * (w - elapsed) / w)
  local allowed = weighted + cur + cost <= limit
  local after = cur
  if allowed then after = cur + cost end
  local reset = now
  if after > 0 then reset = start + 2 * w elseif prev > 0 then reset = start + w end
  local retry = 0
  if not allowed then
    local room = limit - cur - cost
    if room >= 0 and prev > 0 and ceil(w - room * w / prev) < w then
      retry = start + ceil(w - room * w / prev) - now
    elseif limit - cost >= 0 then
      local e = 0
      if cur > 0 then e = math.max(ceil(w - (limit - cost) * w / cur), 0) end
      retry = start + w + e - now
    else
      retry = start + 2 * w - now
    end
  end
  local commit = function()
    redis.call('HSET', key, 'w', idx, 'c', after, 'p', prev)
    redis.call('PEXPIRE', key, ceil((start + 2 * w - now) / 1000))
  end
  return allowed, math.max(limit - weighted - after, 0), reset, retry, commit
end

local function token_bucket(key, limit, w)
  local period = ceil(w / limit)
  local capacity = period * limit
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = tat + cost * period
  local allowed = new_tat - now <= capacity
  local level = tat
  if allowed then level = new_tat end
  local retry = 0
  if not allowed then retry = new_tat - capacity - now end
  local commit = function()
    redis.call('SET', key, string.format('%d', new_tat), 'PX', ceil((new_tat - now) / 1000) + 1)
  end
  return allowed, floor((capacity - (level - now)) / period), level, retry, commit
end

local algorithms = { s = sliding_window, f = fixed_window, t = token_bucket }

local verdict = 0
if not charge then verdict = 3 end
local results = {}
local commits = {}
for i = 1, n do
  local alg, limit, w = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  local allowed, remaining, reset, retry, commit = algorithms[alg](KEYS[i], limit, w)
  if not allowed and verdict == 0 then verdict = 1 end
  commits[i] = commit
  results[i] = { allowed and 1 or 0, remaining, reset, retry }
end
local k = n + 1

-- Days and months since the Unix epoch, from the civil calendar (UTC).
local function period_index(interval)
  local days = floor(now / 86400000000)
  if interval == 1 then return days end
  local z = days + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local m = mp + 3
  if mp >= 10 then m = mp - 9 end
  if m <= 2 then y = y + 1 end
  return y * 12 + m - 1
end

local balance = -1
if ARGV[a] == '1' then
  local qkey = KEYS[k]
  local version, seed = ARGV[a + 1], tonumber(ARGV[a + 2])
  local refill, interval = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local q = redis.call('HMGET', qkey, 'v', 'r', 'p')
  local p = 0
  if interval > 0 then p = period_index(interval) end
  balance = tonumber(q[2])
  if q[1] ~= version or balance == nil then
    balance = seed
  elseif interval > 0 and tonumber(q[3]) ~= p then
    balance = refill
  end
  balance = math.max(balance + tonumber(ARGV[a + 5]), 0)
  if verdict == 0 then
    if balance < cost then verdict = 2 else balance = balance - cost end
  end
  redis.call('HSET', qkey, 'v', version, 'r', balance, 'p', p)
end

if verdict == 0 then
  for i = 1, n do commits[i]() end
end

local out = { verdict, now, balance }
for i = 1, n do
  for j = 1, 4 do out[#out + 1] = results[i][j] end
end
return out
