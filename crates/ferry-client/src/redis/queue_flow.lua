-- ferry_queue, part 2 of 3 (loaded after queue.lua, before
-- queue_ops.lua, as one library): delivery, hand-off and time — what is
-- handed to whom, what comes back, and who waits.

-- Hands ready units out: leased (bound or timed), taken or finished.
-- Replies their mail ('E' entries). Batched: a few commands for the
-- whole batch, and a run is one unit. `lease`: a timed lease's ms, or
-- for a bound one the holder's heartbeat.
local function deliver(ids, mode, holder, lease)
  local payloads = call_many('HMGET', MSG, ids)
  -- Attempts are kept only for messages given back: usually none.
  local atts = {}
  if redis.call('EXISTS', ATT) == 1 then atts = call_many('HMGET', ATT, ids) end
  local parts, n, runs, again = {'E'}, 0, {}, 0
  for i, id in ipairs(ids) do
    local payload = payloads[i]
    if is_run(id) then
      local first, c = run_of(id)
      n = n + c
      parts[i + 1] = 'R' .. first .. ',' .. c .. ',' .. #payload .. ':' .. payload
      runs[#runs + 1] = first
      runs[#runs + 1] = id
    else
      n = n + 1
      local att = tonumber(atts[i]) or 0
      if att > 0 then again = again + 1 end
      parts[i + 1] = id .. ',' .. att .. ',' .. #payload .. ':' .. payload
    end
  end
  if again > 0 then incr('redelivered', again) end
  if mode == 'noack' then
    call_many('HDEL', MSG, ids)
    call_many('HDEL', ATT, ids)
    call_many('HDEL', SK, ids)
    incr('done', n)
    if incr('unfinished', -n) == 0 then tell_joiners() end
  else
    local h, tag = holder, 'L'
    if mode == 'take' then
      tag = 'T'
      call_many('HDEL', MSG, ids)
      incr('ntaken', n)
    else
      if mode == 'timed' then h = '' end
      incr('nleased', n)
    end
    local until_ms = now + lease
    if h ~= '' then
      local timeout = num(redis.call('HGET', META, 'lease_timeout'), 0)
      until_ms = timeout > 0 and now + timeout or NEVER
    end
    local hargs, oargs, who, deadline = {}, {}, tag .. h, tostring(until_ms)
    for i, id in ipairs(ids) do
      hargs[2 * i - 1] = id
      hargs[2 * i] = who
      oargs[2 * i - 1] = deadline
      oargs[2 * i] = id
    end
    call_many('HSET', HOLDER, hargs)
    call_many('ZADD', OUT, oargs)
    if until_ms < NEVER then due_at(until_ms) end
    if h ~= '' then
      index_held(h, ids)
      redis.call('ZADD', LIVE, 'GT', now + lease, h)
    end
    if #runs > 0 then call_many('ZADD', RUNS, runs) end
  end
  incr('delivered', n)
  keep_alive()
  return table.concat(parts)
end

-- The getters in line take what is ready, first come first served.
local function serve_getters(kind)
  kind = kind or settings()
  while true do
    local w = redis.call('LINDEX', GLINE, 0)
    if not w or qsize() == 0 then return end
    local req = redis.call('HGET', GREQ, w)
    redis.call('LPOP', GLINE)
    if req then
      -- until, count, mode, holder, lease, name
      local r = unpack_strings(req)
      local beat = tonumber(redis.call('ZSCORE', LIVE, r[4]))
      if tonumber(r[1]) >= now and not (beat and beat < now) then
        redis.call('HDEL', GREQ, w)
        local origins = {}
        local ids = ready_ids(kind, tonumber(r[2]), true, origins)
        -- count, mode, holder, lease, name; then unit, origin ('' FRESH)
        local rec = {r[2], r[3], r[4], r[5], r[6]}
        for i, id in ipairs(ids) do
          rec[#rec + 1] = id
          rec[#rec + 1] = origins[i] or ''
        end
        redis.call('HSET', OFFERS, w, pack(rec))
        redis.call('ZADD', OFFERX, now + CLAIM_MS, w)
        mail(w, 'O')
      else
        redis.call('HDEL', GREQ, w)
      end
    end
  end
end

-- Waiter w's offer, claimed: delivered now ('E' mail), or nil if none.
local function claim(w)
  if w == '' then return nil end
  local rec = redis.call('HGET', OFFERS, w)
  if not rec then return nil end
  redis.call('HDEL', OFFERS, w)
  redis.call('ZREM', OFFERX, w)
  unmail(w)
  local r = unpack_strings(rec)
  local ids = {}
  for i = 6, #r, 2 do ids[#ids + 1] = r[i] end
  return deliver(ids, r[2], r[3], tonumber(r[4]))
end

-- Offers nobody claimed in time go back where they came from, exactly
-- (in reverse, so that each lands where it was), no attempt counted;
-- dropped if the queue was shut down immediately meanwhile.
local function restore_offers(kind, shutdown)
  if redis.call('EXISTS', OFFERX) == 0 then return end
  for _, w in ipairs(redis.call('ZRANGEBYSCORE', OFFERX, '-inf', now)) do
    local rec = redis.call('HGET', OFFERS, w)
    redis.call('HDEL', OFFERS, w)
    redis.call('ZREM', OFFERX, w)
    unmail(w)
    local r = rec and unpack_strings(rec) or {}
    for i = #r - 1, 6, -2 do
      local unit, origin = r[i], r[i + 1]
      local c = 1
      if is_run(unit) then c = select(2, run_of(unit)) end
      if shutdown == 'immediate' then
        redis.call('HDEL', MSG, unit)
        if c == 1 then
          redis.call('HDEL', ATT, unit)
          redis.call('HDEL', SK, unit)
        end
        incr('dropped', c)
        if incr('unfinished', -c) == 0 then tell_joiners() end
      else
        if origin ~= '' then
          redis.call('ZADD', READY, 0, origin)
        elseif kind == 'lifo' then
          redis.call('RPUSH', FRESH, unit)
        else
          redis.call('LPUSH', FRESH, unit)
        end
        if c > 1 then incr('runextra', c - 1) end
      end
    end
    wake_watchers()
  end
end

-- Adds messages; replies their ids. Batched: a few commands for all.
local function admit(kind, payloads, key, delay)
  local n = #payloads
  local first = incr('seq', n) - n + 1
  if kind == 'fifo' and delay <= 0 and n > 1 then
    -- One run (see the header).
    local ids, parts = {}, {}
    for i, p in ipairs(payloads) do
      ids[i] = first + i - 1
      parts[i] = #p .. ':' .. p
    end
    redis.call('RPUSH', FRESH, store(first, n, table.concat(parts)))
    incr('runextra', n - 1)
    incr('put', n)
    incr('unfinished', n)
    wake_watchers()
    keep_alive()
    return ids
  end
  local ids, sids, margs, rargs, sargs = {}, {}, {}, {}, {}
  local priority = kind == 'priority'
  for i, payload in ipairs(payloads) do
    local id = first + i - 1
    local sid = tostring(id)
    ids[i] = id
    sids[i] = sid
    margs[2 * i - 1] = sid
    margs[2 * i] = payload
    if delay > 0 then
      rargs[2 * i - 1] = now + delay
      rargs[2 * i] = id
    elseif priority then
      rargs[2 * i - 1] = 0
      rargs[2 * i] = priority_member(id, key)
    end
    if priority then
      sargs[2 * i - 1] = id
      sargs[2 * i] = priority_member(id, key)
    end
  end
  call_many('HSET', MSG, margs)
  if priority then call_many('HSET', SK, sargs) end
  if delay > 0 then
    call_many('ZADD', DELAYED, rargs)
    due_at(now + delay)
  elseif priority then
    call_many('ZADD', READY, rargs)
  else
    call_many('RPUSH', FRESH, sids)
  end
  incr('put', n)
  incr('unfinished', n)
  if delay <= 0 then wake_watchers() end
  keep_alive()
  return ids
end

-- The putters in line go in while there is room, first come first
-- served; at a shutdown they are all told.
local function serve_putters(kind, maxsize, shutdown)
  while true do
    local w = redis.call('LINDEX', PLINE, 0)
    if not w then return end
    local req = redis.call('HGET', PREQ, w)
    if not req then
      redis.call('LPOP', PLINE)
    else
      -- until, key, keytype, delay, dedup key ('' none), its window ms,
      -- payloads...
      local r = unpack_strings(req)
      if tonumber(r[1]) < now then
        redis.call('LPOP', PLINE)
        redis.call('HDEL', PREQ, w)
      elseif shutdown ~= 'no' then
        redis.call('LPOP', PLINE)
        redis.call('HDEL', PREQ, w)
        mail(w, 'S')
      else
        local payloads = {}
        for i = 7, #r do table.insert(payloads, r[i]) end
        if maxsize > 0 and qsize() + #payloads > maxsize then return end
        redis.call('LPOP', PLINE)
        redis.call('HDEL', PREQ, w)
        local ids = admit(kind, payloads, r[2], tonumber(r[4]))
        if r[3] ~= '' then redis.call('HSET', META, 'keytype', r[3]) end
        if r[5] ~= '' then
          redis.call('HSET', MAIL, 'd' .. r[5], ids[1])
          redis.call('ZADD', MAILX, now + tonumber(r[6]), 'd' .. r[5])
        end
        mail(w, 'I' .. table.concat(ids, ','))
        serve_getters(kind)
      end
    end
  end
end

-- A leased message comes back: one more attempt, then ready at the head
-- (or dead at max_attempts). `unstarted`: its holder never began it (a
-- prefetch returned unused), so no attempt is counted.
local function give_back(kind, id, delay, unstarted)
  local att = unstarted and 0 or redis.call('HINCRBY', ATT, id, 1)
  local maxatt = num(redis.call('HGET', META, 'max_attempts'), -1)
  if not unstarted and maxatt > 0 and att >= maxatt then
    -- To the dead-letter queue (another queue, maybe on another shard:
    -- the client moves it, see dead_pop), or dropped, counted.
    if redis.call('HGET', META, 'dead_letter') then
      local payload = redis.call('HGET', MSG, id)
      redis.call('RPUSH', DEAD, pack({tostring(id), tostring(att), payload}))
    end
    forget(id)
    incr('dead_lettered')
    finish_one()
    return
  end
  if redis.call('HGET', META, 'shutdown') == 'immediate' then
    forget(id)
    incr('dropped')
    finish_one()
    return
  end
  if delay and delay > 0 then
    -- Ready again when due, as a delay that ran out (make_ready).
    redis.call('ZADD', DELAYED, now + delay, id)
    due_at(now + delay)
  elseif kind == 'lifo' then
    redis.call('RPUSH', FRESH, id)
  elseif kind == 'fifo' then
    redis.call('ZADD', READY, 0, returned_member(id))
  else
    redis.call('ZADD', READY, 0, member_of(id))
  end
  wake_watchers()
end

-- A message out ends unfinished (its lease ran out: `why` 'expired'; its
-- holder went: 'released'): taken, it is lost; leased, it comes back.
local function end_out(kind, id, why)
  if unout(id) == 'T' then
    forget(id)
    incr('lost')
    finish_one()
  else
    incr(why)
    give_back(kind, id, 0)
  end
end

-- Holder `h` is gone (`why`: 'released', its client went; 'expired', its
-- heartbeat ran out): what it held ends unfinished, the lowest ids given
-- back last, so that they are served first.
local function end_holder(kind, h, why)
  local ids = {}
  for _, u in ipairs(held_units(h)) do
    if not is_run(u) then
      ids[#ids + 1] = u
    elseif redis.call('HEXISTS', HOLDER, u) == 1 then
      for _, id in ipairs(explode(u)) do ids[#ids + 1] = id end
    end
  end
  table.sort(ids, function(a, b) return tonumber(a) > tonumber(b) end)
  local n = 0
  for _, id in ipairs(ids) do
    local hd = redis.call('HGET', HOLDER, id)
    if hd and string.sub(hd, 2) == h then
      end_out(kind, id, why)
      n = n + 1
    end
  end
  return n
end

-- Holders whose heartbeat is overdue are dead; their places turn into
-- marks of their death (minus its time), kept a minute.
local function sweep_dead(kind)
  if redis.call('EXISTS', LIVE) == 0 then return end
  for _, h in ipairs(redis.call('ZRANGEBYSCORE', LIVE, '(0', now, 'LIMIT', 0, 100)) do
    end_holder(kind, h, 'expired')
    redis.call('ZADD', LIVE, -now, h)
  end
  redis.call('ZREMRANGEBYSCORE', LIVE, '(' .. (60000 - now), '(0')
end

-- Getters still in line once the queue is shut down and drained are told.
local function tell_getters_shutdown()
  if qsize() > 0 then return end
  for _, w in ipairs(redis.call('LRANGE', GLINE, 0, -1)) do
    if redis.call('HGET', GREQ, w) then mail(w, 'S') end
  end
  redis.call('DEL', GLINE, GREQ)
end

-- Time passes: delayed messages come due, leases and takes expire; then
-- whoever waits is served.
local function advance()
  local kind, maxsize, shutdown, expire, nextdue = settings()
  if now >= nextdue then
    local due = by_due(redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1000))
    if #due > 0 then
      call_many('ZREM', DELAYED, due)
      make_ready(kind, due)
    end
    local expired = redis.call('ZRANGEBYSCORE', OUT, '-inf', now, 'LIMIT', 0, 1000)
    for _, id in ipairs(expired) do
      if is_run(id) then
        for _, x in ipairs(explode(id)) do end_out(kind, x, 'expired') end
      else
        end_out(kind, id, 'expired')
      end
    end
    -- The next time anything comes due, from the sets themselves.
    local next = now + 3600000
    for _, z in ipairs({DELAYED, OUT}) do
      local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
      if first[2] and tonumber(first[2]) < next then next = tonumber(first[2]) end
    end
    redis.call('HSET', META, 'nextdue', next)
  end
  sweep_dead(kind)
  sweep_mail()
  restore_offers(kind, shutdown)
  serve_getters(kind)
  serve_putters(kind, maxsize, shutdown)
  if shutdown ~= 'no' then tell_getters_shutdown() end
  keep_alive(expire)
  return kind, maxsize, shutdown
end

-- How long a waiter may sleep before time alone changes something.
local function next_deadline()
  local hint = 10000
  for _, z in ipairs({DELAYED, OUT, OFFERX}) do
    local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
    if first[2] then
      local ms = tonumber(first[2]) - now
      if ms < hint then hint = ms end
    end
  end
  if hint < 1 then hint = 1 end
  return hint
end

-- A waiter still in line (in `reqs`) keeps its place: its request's life
-- is renewed, and it waits again. nil if it is not in line.
local function still_in_line(reqs, line, waiter, wait_ms)
  if waiter == '' or redis.call('HEXISTS', reqs, waiter) == 0 then return nil end
  local r = unpack_strings(redis.call('HGET', reqs, waiter))
  r[1] = tostring(now + wait_ms + 5000)
  redis.call('HSET', reqs, waiter, pack(r))
  outlive(reqs, wait_ms + 6000)
  outlive(line, wait_ms + 6000)
  return {'WAIT', next_deadline()}
end

-- A waiter's mail, if some came: {"MAIL", mail}. An 'O' left behind by
-- an offer claimed or taken back since is no mail.
local function collect(waiter)
  if waiter == '' then return nil end
  local m = redis.call('HGET', MAIL, 'w' .. waiter)
  if m then
    unmail(waiter)
    if m ~= 'O' then return {'MAIL', m} end
  end
  return nil
end

local function live_count(req)
  local n = 0
  for _, v in ipairs(redis.call('HVALS', req)) do
    if tonumber(unpack_strings(v)[1]) >= now then n = n + 1 end
  end
  return n
end
