#!lua name=ferry_sync
-- ferry's semaphores, events, conditions and barriers on Redis: one atomic
-- script per operation on one of them, with the broker's semantics
-- (docs/protocol.md). KEYS, for every kind: 1 its state, 2 its token
-- sequence, 3 its line of waiters (list of tickets, first come first
-- served), 4 their requests (hash ticket -> "until|holder|ttl"), 5 mail
-- (hash ticket -> reply), 6 mailx (zset ticket -> when unread mail goes),
-- 7 held (a semaphore's holders, zset token -> when its heartbeat runs
-- out; a barrier's round held for its action, a list of tickets), 8 a
-- semaphore's holders oldest first (zset token -> token). The state key's
-- prefix names the kind: ferry:sem:, ferry:ev:, ferry:cond:, ferry:bar:.
-- Waiting works as for locks (lock.lua): whatever is handed to a waiter
-- is mailed to it in the script that hands it over, and {"WOKE", reply,
-- list...} asks the caller to wake its list (<state>:w:<ticket>).

local ARGV, now, NAME
local S, SEQ, LINE, REQ, MAIL, MAILX, HELD, ORDER, WOKEN

local MAIL_MS = 600000

local function fmt(n) return string.format('%.0f', n) end

local function mail(w, m)
  redis.call('HSET', MAIL, w, m)
  redis.call('ZADD', MAILX, now + MAIL_MS, w)
  WOKEN[#WOKEN + 1] = S .. ':w:' .. w
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

local function sweep_mail()
  if redis.call('EXISTS', MAILX) == 0 then return end
  for _, w in ipairs(redis.call('ZRANGEBYSCORE', MAILX, '-inf', now, 'LIMIT', 0, 100)) do
    redis.call('HDEL', MAIL, w)
    redis.call('ZREM', MAILX, w)
  end
end

-- A waiter's request if it is still alive: holder and ttl.
local function live(w)
  local req = redis.call('HGET', REQ, w)
  if not req then return nil end
  local u, holder, ttl = string.match(req, '^(%d+)|(.*)|(%d*)$')
  if tonumber(u) < now then return nil end
  return holder, tonumber(ttl) or 0
end

-- Registers (or renews) `ticket` in line for a little longer than its nap.
local function request(ticket, wait_ms, holder, ttl, join)
  redis.call('HSET', REQ, ticket, fmt(now + wait_ms + 5000) .. '|' .. (holder or '') .. '|' .. (ttl or ''))
  if join then redis.call('RPUSH', LINE, ticket) end
end

local function registered(ticket)
  return ticket ~= '' and redis.call('HEXISTS', REQ, ticket) == 1
end

local function unwait(ticket)
  local removed = redis.call('LREM', LINE, 0, ticket)
  redis.call('HDEL', REQ, ticket)
  return removed
end

local function live_waiters()
  local n = 0
  for _, v in ipairs(redis.call('HVALS', REQ)) do
    if tonumber(string.match(v, '^(%d+)')) >= now then n = n + 1 end
  end
  return n
end

-- Tokens never repeat: each is above the last and at least the server's
-- time in microseconds (a failover that lost the last grants still hands
-- out larger ones).
local function new_token()
  local token = redis.call('INCR', SEQ)
  if token < now * 1000 then
    token = now * 1000
    redis.call('SET', SEQ, fmt(token))
  end
  return token
end

------------------------------------------------------------------ semaphores

local function sem_load(value)
  local h = redis.call('HMGET', S, 'value', 'free')
  local st = {value = value, free = value}
  if h[1] then
    st.value, st.free = tonumber(h[1]), tonumber(h[2])
    if value and st.value ~= value then
      return nil, redis.error_reply("ERR semaphore '" .. NAME .. "' exists with VALUE " .. fmt(st.value))
    end
  end
  return st
end

-- Forgotten once as a newcomer would make it.
local function sem_save(st)
  if st.free == st.value and redis.call('EXISTS', HELD) == 0 and redis.call('EXISTS', LINE) == 0 then
    redis.call('DEL', S)
  else
    redis.call('HSET', S, 'value', fmt(st.value), 'free', fmt(st.free))
  end
end

local function held_count() return redis.call('ZCARD', HELD) end

-- A holder gone without giving back: its permit returns as far as the
-- value it was made with.
local function sem_lose(st, token)
  if redis.call('ZREM', HELD, token) == 1 then
    redis.call('ZREM', ORDER, token)
    if st.free + held_count() < st.value then st.free = st.free + 1 end
  end
end

local function sem_expire(st)
  for _, token in ipairs(redis.call('ZRANGEBYSCORE', HELD, '-inf', now)) do
    sem_lose(st, token)
  end
end

local function sem_grant(st, ttl)
  st.free = st.free - 1
  local token = new_token()
  redis.call('ZADD', HELD, now + ttl, fmt(token))
  redis.call('ZADD', ORDER, token, fmt(token))
  return token
end

-- Free permits go to the first live waiters in line.
local function sem_serve(st)
  while st.free > 0 do
    local w = redis.call('LPOP', LINE)
    if not w then return end
    local _, ttl = live(w)
    redis.call('HDEL', REQ, w)
    if ttl then mail(w, 'T' .. fmt(sem_grant(st, ttl))) end
  end
end

local function sem_hint()
  local first = redis.call('ZRANGE', HELD, 0, 0, 'WITHSCORES')
  if first[2] then return math.max(1, tonumber(first[2]) - now) end
  return 10000
end

local function semaphore(op)
  if op == 'unwait' then
    unwait(ARGV[2])
    return collect(ARGV[2]) or false
  end
  if op == 'waiters' then return live_waiters() end
  if op == 'held' then
    -- ARGV: token
    local e = redis.call('ZSCORE', HELD, ARGV[2])
    if e and tonumber(e) > now then return 1 end
    return 0
  end
  if op == 'view' then
    -- SYNCLIST's {holders, waiters, state}.
    if redis.call('EXISTS', S) == 0 then return {0, live_waiters(), ''} end
    local st = sem_load(nil)
    sem_expire(st)
    sem_serve(st)
    sem_save(st)
    return {held_count(), live_waiters(), fmt(st.free) .. ' of ' .. fmt(st.value) .. ' free'}
  end
  if op == 'renew' or op == 'lose' then
    -- ARGV: token [, ttl ms]
    if redis.call('EXISTS', S) == 0 then return 0 end
    local st = sem_load(nil)
    sem_expire(st)
    local r = 0
    if op == 'renew' and redis.call('ZSCORE', HELD, ARGV[2]) then
      redis.call('ZADD', HELD, 'XX', now + tonumber(ARGV[3]), ARGV[2])
      r = 1
    elseif op == 'lose' then
      sem_lose(st, ARGV[2])
    end
    sem_serve(st)
    sem_save(st)
    return r
  end

  if op == 'acquire' then
    -- ARGV: ticket ('': no wait), wait ms, holder, ttl ms, value
    local ticket, wait_ms, holder, ttl = ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
    local st, refused = sem_load(tonumber(ARGV[6]))
    if not st then return refused end
    local mailed = collect(ticket)
    if mailed then return mailed end
    sem_expire(st)
    sem_serve(st)
    mailed = collect(ticket)
    local reply
    if mailed then
      reply = mailed
    elseif registered(ticket) then
      request(ticket, wait_ms, holder, ttl, false)
      reply = {'WAIT', sem_hint()}
    elseif st.free > 0 then
      reply = sem_grant(st, ttl)
    elseif ticket == '' then
      reply = false
    else
      request(ticket, wait_ms, holder, ttl, true)
      reply = {'WAIT', sem_hint()}
    end
    sem_save(st)
    return reply
  end

  if op == 'release' then
    -- ARGV: token ('': none), value, bounded (1 or 0)
    local token, bounded = ARGV[2], ARGV[4] == '1'
    local st, refused = sem_load(tonumber(ARGV[3]))
    if not st then return refused end
    sem_expire(st)
    local reply = 1
    if token ~= '' then
      if redis.call('ZREM', HELD, token) == 1 then
        redis.call('ZREM', ORDER, token)
        st.free = st.free + 1
      else
        -- Retired, or lost with its holder: only as far as the value.
        if st.free + held_count() < st.value then st.free = st.free + 1 end
        reply = 0
      end
    else
      if bounded and st.free >= st.value then
        sem_save(st)
        return redis.error_reply("OVERRELEASED semaphore '" .. NAME .. "' released too many times")
      end
      if st.free + held_count() >= st.value then
        -- The oldest holder's permit was consumed: this release answers it.
        local oldest = redis.call('ZRANGE', ORDER, 0, 0)[1]
        if oldest then
          redis.call('ZREM', HELD, oldest)
          redis.call('ZREM', ORDER, oldest)
        end
      end
      st.free = st.free + 1
    end
    sem_serve(st)
    sem_save(st)
    return reply
  end

  if op == 'value' then
    -- ARGV: value
    local st, refused = sem_load(tonumber(ARGV[2]))
    if not st then return refused end
    sem_expire(st)
    sem_serve(st)
    sem_save(st)
    return st.free
  end
  return redis.error_reply('ERR unknown semaphore operation ' .. tostring(op))
end

---------------------------------------------------------- events, conditions

local function event(op)
  if op == 'unwait' then
    unwait(ARGV[2])
    return collect(ARGV[2]) or false
  end
  if op == 'waiters' then return live_waiters() end
  if op == 'set' then
    redis.call('SET', S, '1')
    for _, w in ipairs(redis.call('LRANGE', LINE, 0, -1)) do
      if live(w) then mail(w, 'T1') end
    end
    redis.call('DEL', LINE, REQ)
    return 1
  end
  if op == 'clear' then
    redis.call('DEL', S)
    return 1
  end
  if op == 'isset' then return redis.call('EXISTS', S) end
  if op == 'view' then
    return {0, live_waiters(), redis.call('EXISTS', S) == 1 and 'set' or 'clear'}
  end
  if op == 'wait' then
    -- ARGV: ticket ('': no wait), wait ms
    local ticket, wait_ms = ARGV[2], tonumber(ARGV[3])
    local mailed = collect(ticket)
    if mailed then return mailed end
    if redis.call('EXISTS', S) == 1 then
      if ticket ~= '' then unwait(ticket) end
      return 1
    end
    if ticket == '' then return 0 end
    request(ticket, wait_ms, nil, nil, not registered(ticket))
    return {'WAIT', 10000}
  end
  return redis.error_reply('ERR unknown event operation ' .. tostring(op))
end

local function condition(op)
  if op == 'unwait' then
    unwait(ARGV[2])
    return collect(ARGV[2]) or false
  end
  if op == 'waiters' then return live_waiters() end
  if op == 'view' then return {0, live_waiters(), ''} end
  if op == 'enter' then
    -- ARGV: ticket, wait ms. In line before the lock is given back.
    request(ARGV[2], tonumber(ARGV[3]), nil, nil, true)
    return 1
  end
  if op == 'wait' then
    -- ARGV: ticket, wait ms. 0 if it is no longer in line (its request
    -- ran out: it was taken for dead).
    local ticket = ARGV[2]
    local mailed = collect(ticket)
    if mailed then return mailed end
    if not registered(ticket) then return 0 end
    request(ticket, tonumber(ARGV[3]), nil, nil, false)
    return {'WAIT', 10000}
  end
  if op == 'notify' then
    -- ARGV: count ('': all)
    local count = tonumber(ARGV[2])
    local n = 0
    while count == nil or n < count do
      local w = redis.call('LPOP', LINE)
      if not w then break end
      local alive = live(w)
      redis.call('HDEL', REQ, w)
      if alive then
        mail(w, 'T1')
        n = n + 1
      end
    end
    return n
  end
  return redis.error_reply('ERR unknown condition operation ' .. tostring(op))
end

-------------------------------------------------------------------- barriers

local function broken_reply()
  return redis.error_reply("BROKEN barrier '" .. NAME .. "' is broken")
end

local function bar_load(parties)
  local h = redis.call('HMGET', S, 'parties', 'broken', 'acting', 'due')
  local b = {parties = parties, broken = false}
  if h[1] then
    b.parties, b.broken = tonumber(h[1]), h[2] == '1'
    b.acting, b.due = h[3], tonumber(h[4])
    if parties and b.parties ~= parties then
      return nil, redis.error_reply("ERR barrier '" .. NAME .. "' exists with PARTIES " .. fmt(b.parties))
    end
  end
  return b
end

-- Forgotten once it holds nothing.
local function bar_save(b)
  if not b.broken and not b.acting and redis.call('EXISTS', LINE) == 0 then
    redis.call('DEL', S)
  elseif b.parties then
    redis.call('HSET', S, 'parties', fmt(b.parties), 'broken', b.broken and '1' or '0')
    if b.acting then
      redis.call('HSET', S, 'acting', b.acting, 'due', fmt(b.due))
    else
      redis.call('HDEL', S, 'acting', 'due')
    end
  end
end

-- Every waiter (a held round's too) is told BrokenBarrierError; the
-- barrier stays broken unless reset.
local function bar_break(b, reset)
  for _, list in ipairs({HELD, LINE}) do
    for _, w in ipairs(redis.call('LRANGE', list, 0, -1)) do
      redis.call('HDEL', REQ, w)
      mail(w, 'B')
    end
  end
  redis.call('DEL', HELD, LINE)
  b.acting, b.due = nil, nil
  b.broken = not reset
end

-- Lets a round through, each with its place in order of arrival.
local function bar_pass(list)
  for i, w in ipairs(redis.call('LRANGE', list, 0, -1)) do
    redis.call('HDEL', REQ, w)
    mail(w, 'T' .. (i - 1))
  end
  redis.call('DEL', list)
end

-- A dead party never arrives, and an action's runner that died never
-- passes: either breaks the barrier. Replies when to look next.
local function bar_check(b)
  if b.acting and b.due <= now then bar_break(b, false) end
  local hint = 10000
  if b.acting then hint = b.due - now end
  for _, w in ipairs(redis.call('LRANGE', LINE, 0, -1)) do
    local req = redis.call('HGET', REQ, w)
    local u = req and tonumber(string.match(req, '^(%d+)'))
    if not u or u < now then
      bar_break(b, false)
      return 10000
    end
    hint = math.min(hint, u - now + 1)
  end
  return math.max(1, hint)
end

local function barrier(op)
  if op == 'waiters' then return live_waiters() end
  if op == 'arrive' then
    -- ARGV: ticket ('': no wait), wait ms, parties, action (1 or 0),
    -- the runner's heartbeat ms
    local ticket, wait_ms, parties = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
    local action, beat = ARGV[5] == '1', tonumber(ARGV[6])
    local b, refused = bar_load(parties)
    if not b then return refused end
    local mailed = collect(ticket)
    if mailed then return mailed end
    local hint = bar_check(b)
    mailed = collect(ticket)
    local reply
    if mailed then
      reply = mailed
    elseif registered(ticket) then
      request(ticket, wait_ms, nil, nil, false)
      reply = {'WAIT', hint}
    elseif b.broken then
      reply = broken_reply()
    else
      local n = redis.call('LLEN', LINE)
      if n + 1 == b.parties and not (action and b.acting) then
        if action then
          if n > 0 then redis.call('RENAME', LINE, HELD) end
          b.acting, b.due = fmt(new_token()), now + beat
          reply = {'ACT', b.parties - 1, tonumber(b.acting)}
        else
          bar_pass(LINE)
          reply = b.parties - 1
        end
      elseif n + 1 == b.parties or ticket == '' then
        -- The next round is full while the last one's action runs, or a
        -- NOWAIT arrival that does not fill the round: it breaks.
        bar_break(b, false)
        reply = broken_reply()
      else
        request(ticket, wait_ms, nil, nil, true)
        reply = {'WAIT', hint}
      end
    end
    bar_save(b)
    return reply
  end
  local b = bar_load(nil)
  if op == 'unwait' then
    -- A waiter that gives up breaks the barrier, unless its round ended.
    local ticket = ARGV[2]
    local mailed = collect(ticket)
    if mailed then return mailed end
    if unwait(ticket) > 0 then
      bar_break(b, false)
      bar_save(b)
      mailed = collect(ticket)
      if mailed then return mailed end
    end
    return {'MAIL', 'B'}
  end
  if op == 'pass' then
    -- The action ran: the held round goes through. Its token, or 0.
    if not b.acting then return 0 end
    local token = tonumber(b.acting)
    bar_pass(HELD)
    b.acting, b.due = nil, nil
    bar_save(b)
    return token
  end
  if op == 'renew' or op == 'lose' then
    -- ARGV: token [, ttl ms]: the action's runner.
    if b.acting ~= ARGV[2] then return 0 end
    if op == 'renew' then
      b.due = now + tonumber(ARGV[3])
    else
      bar_break(b, false)
    end
    bar_save(b)
    return 1
  end
  if op == 'abort' then
    -- ARGV: parties (made so if new)
    b.parties = b.parties or tonumber(ARGV[2]) or 1
    local token = b.acting and tonumber(b.acting) or 0
    bar_break(b, false)
    bar_save(b)
    return token
  end
  if op == 'reset' then
    local token = b.acting and tonumber(b.acting) or 0
    if b.parties then
      bar_break(b, true)
      bar_save(b)
    end
    return token
  end
  if op == 'view' then
    bar_check(b)
    bar_save(b)
    if not b.parties then return {0, 0, ''} end
    local state = fmt(b.parties) .. ' parties'
    if b.acting then state = state .. ', action running' end
    if b.broken then state = state .. ', broken' end
    return {0, redis.call('LLEN', LINE) + redis.call('LLEN', HELD), state}
  end
  if op == 'info' then
    bar_check(b)
    bar_save(b)
    return {redis.call('LLEN', LINE) + redis.call('LLEN', HELD), b.broken and 1 or 0}
  end
  return redis.error_reply('ERR unknown barrier operation ' .. tostring(op))
end

local KINDS = {sem = semaphore, ev = event, cond = condition, bar = barrier}

-- The reply, and the waiters' lists to wake.
local function sync(keys, args)
  ARGV = args
  S, SEQ, LINE, REQ, MAIL, MAILX, HELD, ORDER =
    keys[1], keys[2], keys[3], keys[4], keys[5], keys[6], keys[7], keys[8]
  local kind
  kind, NAME = string.match(S, '^ferry:(%a+):{(.*)}$')
  local run = KINDS[kind or '']
  if not run then return redis.error_reply('ERR not a ferry primitive: ' .. S) end
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  WOKEN = {}
  sweep_mail()
  local r = run(ARGV[1])
  -- An error reply wakes them too (a barrier broken by this arrival).
  if #WOKEN == 0 then return r end
  local out = {'WOKE', r}
  for _, k in ipairs(WOKEN) do out[#out + 1] = k end
  return out
end

redis.register_function('ferry_sync', sync)
