-- Limiter decisions, atomically, on the Redis server's clock: N decisions that
-- arrived together, each deciding every limit all-or-nothing and the usage
-- quota, in order (each sees what the ones before it charged). (Usage counters
-- and the recent-requests log are gathered by the replica and written by
-- usage_batch.lua.) Mirrors src/ratelimit/algorithms.rs and
-- src/domain/quota.rs; keep them in step.
--
-- Lua numbers are doubles, exact for integers below 2^53: every intermediate
-- here stays below that (limits and costs < 2^30, windows < 2^42 us, now <
-- 2^53), with idiv and muldiv below doing exact integer division.
--
-- KEYS: per decision, one per limit, then its quota key if it has a quota.
-- All keys share one cluster slot.
--
-- ARGV[1]: every number of the batch, each a little-endian signed 64-bit
--   integer (one string rather than a dozen arguments a decision: Redis parses
--   and Lua interns one string, not hundreds): the number of decisions, then
--   per decision: the quota's cost, charge (1 or 0: peek only), number of
--   limits n, then n x (algorithm 0 sliding | 1 fixed | 2 token bucket, limit,
--   window in microseconds, the limit's own cost, enforcement 0 (over it
--   refuses) | 1 shadow (never refuses) | 2 collective (refuses when every
--   collective limit is over)), then has_quota, version, seed, refill_amount,
--   refill_interval (0 none, 1 day, 2 month), amount to add to the balance
--   (UpdateKey's add_to_quota; 0 otherwise).
-- Returns one string of little-endian signed 64-bit integers, per decision:
--   verdict (0 admitted, 1 rate limited, 2 quota exceeded, 3 not charged), now
--   in microseconds, quota balance (-1 without a quota), then n x (allowed,
--   remaining, reset_at us, retry_after us).
--
-- A number that can pass 14 digits (a quota version, a balance, a token
-- bucket's instant) is written through string.format('%d'): Lua's own
-- conversion keeps 14 significant digits, and a version has 16.

local MAX_QUOTA = 1000000000000

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local floor = math.floor
local max = math.max
local unpack_ints, pack_ints = struct.unpack, struct.pack

-- floor(a / b) for integers 0 <= a, 0 < b, a + b < 2^53. The double quotient
-- may round to the next integer; the remainder tells.
local function idiv(a, b)
  local q = floor(a / b)
  local r = a - q * b
  if r < 0 then q = q - 1 elseif r >= b then q = q + 1 end
  return q
end

-- floor(a * b / d) and whether it left a remainder, for integers
-- 0 <= a < 2^30, 0 <= b < 2^42, 0 < d < 2^42: long division of a * b by d,
-- ten bits of b at a time, so no intermediate reaches 2^53. Callers use it
-- only where the quotient is below 2^42.
local function muldiv(a, b, d)
  local ab = a * b
  -- A product below 2^53 is exact as a double (and one at or above it
  -- rounds to at least 2^53): one division, not five.
  if ab < 9007199254740992 then
    local q = idiv(ab, d)
    return q, ab - q * d > 0
  end
  local q, r = 0, 0
  for shift = 40, 0, -10 do
    local chunk = floor(b / 2 ^ shift) % 1024
    local x = r * 1024 + a * chunk
    local qd = idiv(x, d)
    r = x - qd * d
    q = q * 1024 + qd
  end
  return q, r > 0
end

local function ceil_ms(us) return idiv(us + 999, 1000) end

-- Every key is read at most once per call and written at most once, at the
-- end (flush): the decisions on one key that arrived together (a busy key's
-- batch) share one read and one write, and each still sees what the ones
-- before it charged. A counter is a hash (w: window index, c: count, p: the
-- previous window's count, sliding only); a token bucket a string (its
-- theoretical arrival time); a quota a hash (v: version, r: balance,
-- p: refill period).
local states = {}
local written = {}

local function counter_state(key)
  local st = states[key]
  if st == nil then
    local s = redis.call('HMGET', key, 'w', 'c', 'p')
    local w = tonumber(s[1])
    st = { w = w, c = tonumber(s[2]), p = tonumber(s[3]), stored_w = w }
    states[key] = st
  end
  return st
end

local function bucket_state(key)
  local st = states[key]
  if st == nil then
    st = { tat = tonumber(redis.call('GET', key)) }
    states[key] = st
  end
  return st
end

local function mark_written(key, st)
  if not st.dirty then
    st.dirty = true
    written[#written + 1] = key
  end
end

local function fixed_window(key, limit, w, cost)
  local idx = idiv(now, w)
  local st = counter_state(key)
  local count = 0
  if st.w == idx then count = st.c end
  local allowed = count + cost <= limit
  local after = count
  if allowed then after = count + cost end
  local reset = (idx + 1) * w
  local retry = 0
  if not allowed then retry = reset - now end
  return allowed, max(limit - after, 0), reset, retry, st, idx, after, nil, reset - now
end

local function sliding_window(key, limit, w, cost)
  local idx = idiv(now, w)
  local start = idx * w
  local elapsed = now - start
  local st = counter_state(key)
  local cur, prev = 0, 0
  if st.w == idx then
    cur, prev = st.c, st.p or 0
  elseif st.w == idx - 1 then
    prev = st.c
  end
  local weighted, inexact = muldiv(prev, w - elapsed, w)
  if inexact then weighted = weighted + 1 end
  local allowed = weighted + cur + cost <= limit
  local after = cur
  if allowed then after = cur + cost end
  local reset = now
  if after > 0 then reset = start + 2 * w elseif prev > 0 then reset = start + w end
  local retry = 0
  if not allowed then
    local room = limit - cur - cost
    local within = 0
    if room >= 0 and prev > 0 then within = muldiv(room, w, prev) end
    if within > 0 then
      retry = start + w - within - now
    elseif limit - cost >= 0 then
      local wait = 0
      if limit - cost < cur then wait = w - muldiv(limit - cost, w, cur) end
      retry = start + w + wait - now
    else
      retry = start + 2 * w - now
    end
  end
  return allowed, max(limit - weighted - after, 0), reset, retry, st, idx, after, prev,
    start + 2 * w - now
end

local function token_bucket(key, limit, w, cost)
  local period = idiv(w + limit - 1, limit)
  local capacity = period * limit
  local st = bucket_state(key)
  local tat = st.tat or now
  if tat < now then tat = now end
  local function left(level) return idiv(max(capacity - (level - now), 0), period) end
  if cost > limit then
    -- Never admitted; cost * period could leave the exact range.
    return false, left(tat), tat, max(tat - now, period), st
  end
  local new_tat = tat + cost * period
  local allowed = new_tat - now <= capacity
  local level = tat
  if allowed then level = new_tat end
  local retry = 0
  if not allowed then retry = new_tat - capacity - now end
  return allowed, left(level), level, retry, st, new_tat
end

-- Charges a limit: its state takes what its algorithm computed (the window
-- index, count and previous count of a counter, with the time left until
-- it expires; a token bucket's new arrival time), written at the flush.
local function charge_limit(key, alg, st, a, b, c, ttl_us)
  if alg == 2 then
    st.tat, st.bucket = a, true
  else
    st.w, st.c, st.ttl_ms = a, b, ceil_ms(ttl_us)
    if alg == 0 then st.p, st.sliding = c, true end
  end
  mark_written(key, st)
end

-- Writes what the call changed, each key once.
local function flush()
  for _, key in ipairs(written) do
    local st = states[key]
    if st.bucket then
      redis.call('SET', key, string.format('%d', st.tat), 'PX', ceil_ms(st.tat - now) + 1)
    elseif st.quota then
      redis.call('HSET', key, 'v', string.format('%d', st.v),
        'r', string.format('%d', st.r), 'p', st.p)
    else
      if st.sliding then
        redis.call('HSET', key, 'w', st.w, 'c', st.c, 'p', st.p)
      else
        redis.call('HSET', key, 'w', st.w, 'c', st.c)
      end
      -- Within one window the deadline is the same instant, set by the
      -- window's first write (HSET keeps a key's TTL).
      if st.stored_w ~= st.w then redis.call('PEXPIRE', key, st.ttl_ms) end
    end
  end
end

local algorithms = { [0] = sliding_window, [1] = fixed_window, [2] = token_bucket }

-- Days and months since the Unix epoch, from the civil calendar (UTC).
local function period_index(interval)
  local days = idiv(now, 86400000000)
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

local args = ARGV[1]
local pos = 1
local batch
batch, pos = unpack_ints('<i8', args, pos)
local k = 1
local out = {}
-- Each limit's result and what charging it writes, for the decision at
-- hand (reused by the next: no tables or closures per decision).
local r_allowed, r_remaining, r_reset, r_retry = {}, {}, {}, {}
local c_key, c_alg, c_state, c_a, c_b, c_c, c_ttl = {}, {}, {}, {}, {}, {}, {}

for _ = 1, batch do
  local cost, charge, n
  cost, charge, n, pos = unpack_ints('<i8i8i8', args, pos)

  local verdict = 0
  if charge ~= 1 then verdict = 3 end
  local collective, collective_over = 0, 0
  for i = 1, n do
    local alg, limit, w, own_cost, enforcement
    alg, limit, w, own_cost, enforcement, pos = unpack_ints('<i8i8i8i8i8', args, pos)
    local key = KEYS[k]
    local allowed, remaining, reset, retry, st, a, b, c, ttl =
      algorithms[alg](key, limit, w, own_cost)
    k = k + 1
    if enforcement == 2 then
      collective = collective + 1
      if not allowed then collective_over = collective_over + 1 end
    elseif enforcement == 0 and not allowed and verdict == 0 then
      verdict = 1
    end
    r_allowed[i], r_remaining[i], r_reset[i], r_retry[i] = allowed, remaining, reset, retry
    c_key[i], c_alg[i], c_state[i], c_a[i], c_b[i], c_c[i], c_ttl[i] = key, alg, st, a, b, c, ttl
  end
  if verdict == 0 and collective > 0 and collective_over == collective then verdict = 1 end

  local balance = -1
  local has_quota, version, seed, refill, interval, add
  has_quota, version, seed, refill, interval, add, pos =
    unpack_ints('<i8i8i8i8i8i8', args, pos)
  if has_quota == 1 then
    local qkey = KEYS[k]
    k = k + 1
    local st = states[qkey]
    if st == nil then
      local q = redis.call('HMGET', qkey, 'v', 'r', 'p')
      st = { v = tonumber(q[1]), r = tonumber(q[2]), p = tonumber(q[3]), quota = true }
      states[qkey] = st
    end
    local p = 0
    if interval > 0 then p = period_index(interval) end
    local same_version = st.v == version
    balance = st.r
    if not same_version or balance == nil then
      balance = seed
    elseif interval > 0 and st.p ~= p then
      balance = refill
    end
    balance = math.min(max(balance + add, 0), MAX_QUOTA)
    if verdict == 0 then
      if balance < cost then verdict = 2 else balance = balance - cost end
    end
    -- A denial that changed nothing writes nothing.
    if not same_version or st.r ~= balance or st.p ~= p then
      st.v, st.r, st.p = version, balance, p
      mark_written(qkey, st)
    end
  end

  if verdict == 0 then
    -- A shadow or collective limit that is over is not charged.
    for i = 1, n do
      if r_allowed[i] then
        charge_limit(c_key[i], c_alg[i], c_state[i], c_a[i], c_b[i], c_c[i], c_ttl[i])
      end
    end
  end

  if n == 1 then
    out[#out + 1] = pack_ints('<i8i8i8i8i8i8i8', verdict, now, balance,
      r_allowed[1] and 1 or 0, r_remaining[1], r_reset[1], r_retry[1])
  else
    out[#out + 1] = pack_ints('<i8i8i8', verdict, now, balance)
    for i = 1, n do
      out[#out + 1] = pack_ints('<i8i8i8i8', r_allowed[i] and 1 or 0, r_remaining[i],
        r_reset[i], r_retry[i])
    end
  end
end
flush()
return table.concat(out)
