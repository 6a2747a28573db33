#!lua name=ferry_lock
-- ferry's locks on Redis: one atomic script per operation on one lock.
-- KEYS: 1 the lock (hash: token, holder, expires), 2 its token sequence,
-- 3 its line of waiters (list of tickets, first come first served), 4
-- their requests (hash ticket -> "until|holder|ttl"), 5 mail (hash
-- ticket -> 'T' and the token it was granted), 6 mailx (zset ticket ->
-- when its mail goes unread). A release hands the lock to the first live
-- waiter in the same script and mails it the token, as the queue script
-- does: {"WOKE", reply, list...} asks the caller to wake the waiter's
-- list (<lock>:w:<ticket>), which the script does not touch.
-- Tokens never repeat: each is above the last and at least the server's
-- time in microseconds, so a failover that lost the last grants still
-- hands out larger ones.

-- A function library (FCALL ferry_lock); each call sets these first.
local ARGV, now
local LOCK, SEQ, LINE, REQ, MAIL, MAILX, WOKEN

local MAIL_MS = 600000

local function held()
  local h = redis.call('HMGET', LOCK, 'token', 'holder', 'expires')
  if not h[1] then return nil end
  if tonumber(h[3]) <= now then
    redis.call('DEL', LOCK)
    return nil
  end
  return h
end

local function grant(holder, ttl)
  local token = redis.call('INCR', SEQ)
  if token < now * 1000 then
    token = now * 1000
    redis.call('SET', SEQ, token)
  end
  redis.call('HSET', LOCK, 'token', token, 'holder', holder, 'expires', now + ttl)
  return token
end

-- A free lock goes to the first live waiter in line.
local function serve()
  while not held() do
    local w = redis.call('LPOP', LINE)
    if not w then return end
    local req = redis.call('HGET', REQ, w)
    redis.call('HDEL', REQ, w)
    if req then
      local u, holder, ttl = string.match(req, '^(%d+)|(.*)|(%d+)$')
      if tonumber(u) >= now then
        local token = grant(holder, tonumber(ttl))
        redis.call('HSET', MAIL, w, 'T' .. string.format('%.0f', token))
        redis.call('ZADD', MAILX, now + MAIL_MS, w)
        WOKEN[#WOKEN + 1] = LOCK .. ':w:' .. w
      end
    end
  end
end

local function collect(ticket)
  if ticket == '' then return nil end
  local m = redis.call('HGET', MAIL, ticket)
  if m then
    redis.call('HDEL', MAIL, ticket)
    redis.call('ZREM', MAILX, ticket)
    return {'MAIL', m}
  end
  return nil
end

-- Mail a waiter that died never read goes.
local function sweep_mail()
  if redis.call('EXISTS', MAILX) == 0 then return end
  for _, w in ipairs(redis.call('ZRANGEBYSCORE', MAILX, '-inf', now, 'LIMIT', 0, 100)) do
    redis.call('HDEL', MAIL, w)
    redis.call('ZREM', MAILX, w)
  end
end

local function run(keys, args)
  ARGV = args
  LOCK, SEQ, LINE, REQ, MAIL, MAILX = keys[1], keys[2], keys[3], keys[4], keys[5], keys[6]
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  sweep_mail()
  local op = ARGV[1]

  if op == 'acquire' then
    -- ARGV: ticket ('': no wait), wait ms, holder, ttl ms
    local ticket, wait_ms, holder, ttl = ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
    local mailed = collect(ticket)
    if mailed then return mailed end
    serve()
    mailed = collect(ticket)
    if mailed then return mailed end
    local h = held()
    local hint = 10000
    if h then
      hint = tonumber(h[3]) - now
      if hint < 1 then hint = 1 end
    end
    if ticket ~= '' and redis.call('HEXISTS', REQ, ticket) == 1 then
      redis.call('HSET', REQ, ticket, (now + wait_ms + 5000) .. '|' .. holder .. '|' .. ttl)
      return {'WAIT', hint}
    end
    if not h then return grant(holder, ttl) end
    if ticket == '' then return false end
    redis.call('HSET', REQ, ticket, (now + wait_ms + 5000) .. '|' .. holder .. '|' .. ttl)
    redis.call('RPUSH', LINE, ticket)
    return {'WAIT', hint}
  end

  if op == 'release' then
    -- ARGV: token
    local h = held()
    if h and h[1] == ARGV[2] then
      redis.call('DEL', LOCK)
      serve()
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
    serve()
    return 0
  end

  if op == 'held' then
    -- ARGV: token. 1 while it is the lock's grant (not run out), else 0.
    local h = held()
    if h and h[1] == ARGV[2] then return 1 end
    return 0
  end

  if op == 'unwait' then
    -- ARGV: ticket. Out of the line; its token if it was granted first.
    redis.call('LREM', LINE, 0, ARGV[2])
    redis.call('HDEL', REQ, ARGV[2])
    local mailed = collect(ARGV[2])
    if mailed then return mailed end
    return false
  end

  if op == 'view' then
    -- SYNCLIST's {holders, waiters, state}.
    local h = held()
    local n = 0
    for _, v in ipairs(redis.call('HVALS', REQ)) do
      if tonumber(string.match(v, '^(%d+)')) >= now then n = n + 1 end
    end
    if h then return {1, n, 'token ' .. h[1]} end
    return {0, n, ''}
  end

  if op == 'waiters' then
    local n = 0
    for _, v in ipairs(redis.call('HVALS', REQ)) do
      if tonumber(string.match(v, '^(%d+)')) >= now then n = n + 1 end
    end
    return n
  end

  return redis.error_reply('ERR unknown lock operation ' .. tostring(op))
end

-- The reply, and the waiter's list to wake if one was granted the lock.
local function lock(keys, args)
  WOKEN = {}
  local r = run(keys, args)
  if #WOKEN == 0 or (type(r) == 'table' and r.err) then return r end
  local out = {'WOKE', r}
  for _, k in ipairs(WOKEN) do out[#out + 1] = k end
  return out
end

redis.register_function('ferry_lock', lock)
