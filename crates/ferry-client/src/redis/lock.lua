-- ferry's locks on Redis: one atomic script per operation on one lock.
-- KEYS: 1 the lock (hash: token, holder, expires), 2 its token sequence,
-- 3 its waiters in line (zset ticket -> arrival ms), 4 their deadlines
-- (hash ticket -> until ms), 5 its wake-up list.
-- Tokens never repeat: each is above the last and at least the server's
-- time in microseconds, so a failover that lost the last grants still
-- hands out larger ones.

local LOCK, SEQ, LINE, UNTIL, WAKE = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op = ARGV[1]

local function held()
  local h = redis.call('HMGET', LOCK, 'token', 'holder', 'expires')
  if not h[1] then return nil end
  if tonumber(h[3]) <= now then
    redis.call('DEL', LOCK)
    return nil
  end
  return h
end

local function wake()
  local n = redis.call('ZCARD', LINE)
  if n == 0 then return end
  for _ = 1, n do redis.call('RPUSH', WAKE, '1') end
  redis.call('LTRIM', WAKE, -2 * n, -1)
end

-- Waiters whose caller stopped waiting (died, gave up) leave the line.
local function prune()
  local all = redis.call('HGETALL', UNTIL)
  for i = 1, #all, 2 do
    if tonumber(all[i + 1]) < now then
      redis.call('ZREM', LINE, all[i])
      redis.call('HDEL', UNTIL, all[i])
    end
  end
end

if op == 'acquire' then
  -- ARGV: ticket ('': no wait), wait ms, holder, ttl ms
  local ticket, wait_ms, holder, ttl = ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
  prune()
  local h = held()
  local first = redis.call('ZRANGE', LINE, 0, 0)[1]
  if h or (first and first ~= ticket) then
    if ticket == '' then return false end
    if not redis.call('ZSCORE', LINE, ticket) then
      redis.call('ZADD', LINE, now, ticket)
    end
    redis.call('HSET', UNTIL, ticket, now + wait_ms + 5000)
    local hint = 1000
    if h then
      local left = tonumber(h[3]) - now
      if left < hint then hint = left end
    end
    if hint < 1 then hint = 1 end
    return {'WAIT', hint}
  end
  if ticket ~= '' then
    redis.call('ZREM', LINE, ticket)
    redis.call('HDEL', UNTIL, ticket)
  end
  local token = redis.call('INCR', SEQ)
  if token < now * 1000 then
    token = now * 1000
    redis.call('SET', SEQ, token)
  end
  redis.call('HSET', LOCK, 'token', token, 'holder', holder, 'expires', now + ttl)
  return token
end

if op == 'release' then
  -- ARGV: token
  local h = held()
  if h and h[1] == ARGV[2] then
    redis.call('DEL', LOCK)
    wake()
    return 1
  end
  return 0
end

if op == 'renew' then
  -- ARGV: token, ttl ms
  local h = held()
  if h and h[1] == ARGV[2] then
    redis.call('HSET', LOCK, 'expires', now + tonumber(ARGV[3]))
    return 1
  end
  return 0
end

if op == 'unwait' then
  redis.call('ZREM', LINE, ARGV[2])
  redis.call('HDEL', UNTIL, ARGV[2])
  wake()
  return 0
end

return redis.error_reply('ERR unknown lock operation ' .. tostring(op))
