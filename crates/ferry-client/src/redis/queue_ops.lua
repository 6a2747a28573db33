-- ferry_queue, part 3 of 3 (after queue.lua and queue_flow.lua): each
-- operation, and the function the library registers.

-- Each operation, by name (a table: the functions are many more than
-- the 60 upvalues one Lua function may have).
local OPS = {}


OPS['create'] = function()
  -- ARGV: explicit, the queue's name, then name/value pairs of the
  -- settings named.
  local explicit, name = ARGV[2] == '1', ARGV[3]
  local named = {}
  for i = 4, #ARGV, 2 do named[ARGV[i]] = ARGV[i + 1] end
  if exists() and redis.call('HGET', META, 'explicit') == '1' then
    local diffs = {}
    for _, k in ipairs({'maxsize', 'kind', 'lease_timeout', 'max_attempts', 'dead_letter', 'expire'}) do
      if named[k] ~= nil then
        local have = redis.call('HGET', META, k) or ''
        local want = named[k]
        if k == 'kind' then
          if have == '' then have = 'fifo' end
        elseif k ~= 'dead_letter' then
          have = tostring(num(have, 0)); want = tostring(num(want, 0))
        end
        if have ~= want then table.insert(diffs, k .. ' ' .. have .. ', not ' .. want) end
      end
    end
    if #diffs > 0 then
      return redis.error_reply('EXISTS queue ' .. name .. ' exists with ' .. table.concat(diffs, ', '))
    end
    return redis.status_reply('OK')
  end
  ensure()
  if named['kind'] and named['kind'] ~= (redis.call('HGET', META, 'kind') or 'fifo') and qsize() > 0 then
    return redis.error_reply('ERR KIND can change only while the queue is empty')
  end
  for k, v in pairs(named) do redis.call('HSET', META, k, v) end
  if explicit then redis.call('HSET', META, 'explicit', '1') end
  advance()
  return redis.status_reply('OK')
end

OPS['config'] = function()
  ensure()
  for i = 2, #ARGV, 2 do redis.call('HSET', META, ARGV[i], ARGV[i + 1]) end
  advance()
  return redis.status_reply('OK')
end

OPS['put'] = function()
  -- ARGV: waiter, wait_ms, key (or ''), keytype (or ''), delay ms, the
  -- DEDUP key's window ms (0: no key; OWN is the key), then the
  -- payloads.
  local waiter, wait_ms, key, keytype, delay, dedup = ARGV[2], num(ARGV[3], 0), ARGV[4], ARGV[5], num(ARGV[6], 0), num(ARGV[7], 0)
  local mailed = collect(waiter)
  if mailed then return mailed end
  ensure()
  local kind, maxsize, shutdown = advance()
  local again = still_in_line(PREQ, PLINE, waiter, wait_ms)
  if again then return again end
  if shutdown ~= 'no' then return redis.error_reply('SHUTDOWN queue is shut down') end
  if dedup > 0 then
    local first = redis.call('GET', OWN) or redis.call('HGET', MAIL, 'd' .. string.sub(OWN, #PREFIX + 1))
    if first then return {tonumber(first)} end
  end
  local payloads = {}
  for i = 8, #ARGV do table.insert(payloads, ARGV[i]) end
  if keytype ~= '' then
    local have = redis.call('HGET', META, 'keytype')
    -- Taken messages are the takers' now: only what may be served again
    -- must compare with the new item.
    local holds = qsize() + redis.call('ZCARD', DELAYED) + num(redis.call('HGET', META, 'nleased'), 0) > 0
    if have and have ~= keytype and holds then
      return redis.error_reply('KEYTYPE the queue holds items ordered as ' .. have .. '; this one is ' .. keytype)
    end
  end
  if maxsize > 0 and #payloads > maxsize then
    return redis.error_reply('ERR more payloads than the queue\'s maxsize')
  end
  -- Room, and nobody in line before this put.
  local line = redis.call('LLEN', PLINE)
  if maxsize > 0 and (qsize() + #payloads > maxsize or line > 0) then
    if waiter == '' then return redis.error_reply('FULL queue is full') end
    local dk = ''
    if dedup > 0 then dk = string.sub(OWN, #PREFIX + 1) end
    local req = {tostring(now + wait_ms + 5000), key, keytype, tostring(delay), dk, tostring(dedup)}
    for _, p in ipairs(payloads) do table.insert(req, p) end
    redis.call('HSET', PREQ, waiter, pack(req))
    redis.call('RPUSH', PLINE, waiter)
    outlive(PREQ, wait_ms + 6000)
    outlive(PLINE, wait_ms + 6000)
    return {'WAIT', next_deadline()}
  end
  if keytype ~= '' then redis.call('HSET', META, 'keytype', keytype) end
  local ids = admit(kind, payloads, key, delay)
  if dedup > 0 then redis.call('SET', OWN, ids[1], 'PX', dedup) end
  serve_getters(kind)
  return ids
end

OPS['get'] = function()
  -- ARGV: waiter, wait_ms, count, mode (lease/timed/take/noack), holder,
  -- lease ms (a timed lease's, else the holder's heartbeat), queue name
  -- (for the entries), the holder's heartbeat ms.
  local waiter, wait_ms, count, mode, holder, lease, name = ARGV[2], num(ARGV[3], 0), num(ARGV[4], 1), ARGV[5], ARGV[6], num(ARGV[7], 0), ARGV[8]
  local beat = num(ARGV[9], lease)
  local got = claim(waiter)
  local mailed = collect(waiter)
  if got then return {'ENTRIES', got} end
  if mailed then return mailed end
  ensure()
  local kind, maxsize, shutdown = advance()
  got = claim(waiter)
  mailed = collect(waiter)
  if got then return {'ENTRIES', got} end
  if mailed then return mailed end
  local again = still_in_line(GREQ, GLINE, waiter, wait_ms)
  if again then return again end
  local ids = ready_ids(kind, count, true)
  if #ids == 0 then
    if shutdown ~= 'no' then return redis.error_reply('SHUTDOWN queue is shut down') end
    if waiter == '' then return false end
    redis.call('HSET', GREQ, waiter, pack({tostring(now + wait_ms + 5000), tostring(count), mode, holder, tostring(lease), name}))
    redis.call('RPUSH', GLINE, waiter)
    outlive(GREQ, wait_ms + 6000)
    outlive(GLINE, wait_ms + 6000)
    if holder ~= '' then redis.call('ZADD', LIVE, 'GT', now + beat, holder) end
    return {'WAIT', next_deadline()}
  end
  local m = deliver(ids, mode, holder, lease)
  serve_putters(kind, maxsize, shutdown)
  return {'ENTRIES', m}
end

OPS['join'] = function()
  -- ARGV: waiter, wait_ms
  local waiter, wait_ms = ARGV[2], num(ARGV[3], 0)
  local mailed = collect(waiter)
  if mailed then return redis.status_reply('OK') end
  if not exists() then return redis.status_reply('OK') end
  advance()
  if num(redis.call('HGET', META, 'unfinished'), 0) == 0 then
    if waiter ~= '' then redis.call('ZREM', JOINERS, waiter) end
    return redis.status_reply('OK')
  end
  if waiter == '' then return false end
  redis.call('ZADD', JOINERS, now + wait_ms + 5000, waiter)
  outlive(JOINERS, wait_ms + 6000)
  return {'WAIT', next_deadline()}
end

OPS['watch'] = function()
  -- ARGV: waiter, wait_ms. Replies how long it may sleep at most. The
  -- set lives as long as its longest watch (a watcher that died leaves
  -- nothing behind).
  local key, life = KEYS[21], num(ARGV[3], 0) + 5000
  redis.call('ZADD', key, now + life, ARGV[2])
  if redis.call('PTTL', key) < life then redis.call('PEXPIRE', key, life) end
  return next_deadline()
end

OPS['unwatch'] = function()
  redis.call('ZREM', KEYS[21], ARGV[2])
  return 0
end

OPS['unwait'] = function()
  -- ARGV: waiter. It stops waiting (a timeout, a cancel): out of every
  -- line; its mail if some came first (then it did not stop in time:
  -- what the mail says happened).
  local waiter = ARGV[2]
  redis.call('LREM', GLINE, 0, waiter)
  redis.call('HDEL', GREQ, waiter)
  redis.call('LREM', PLINE, 0, waiter)
  redis.call('HDEL', PREQ, waiter)
  redis.call('ZREM', JOINERS, waiter)
  local got = claim(waiter)
  local mailed = collect(waiter)
  keep_alive()
  if got then return {'MAIL', got} end
  if mailed then return mailed end
  return false
end

-- Finishing, giving back, extending: the holder's own, or a timed lease.
local function held_by(id, holder)
  local h = redis.call('HGET', HOLDER, id)
  if not h then return nil end
  local who = string.sub(h, 2)
  if who == '' or who == holder then return string.sub(h, 1, 1) end
  return nil
end

OPS['done'] = function()
  -- ARGV: holder, ids...
  local holder = ARGV[2]
  if not exists() then return 0 end
  advance()
  local ids = {}
  for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
  if #ids == 0 then return 0 end
  -- Compared whole (no substring per id): 'L'/'T' and the holder, or
  -- a timed lease's bare 'L' anyone may finish.
  local lh, th = 'L' .. holder, 'T' .. holder
  local function ours(h) return h and (h == lh or h == th or h == 'L' or h == 'T') end
  -- mine: the units finished (runs and ids); n, taken: their messages.
  local mine, n, taken, runs, gone = {}, 0, 0, {}, {}
  if redis.call('EXISTS', RUNS) == 1 then
    -- Ids in out runs: a run finished whole goes as one; one finished
    -- in part is broken into its messages first. The rest are plain.
    local nums, seen, plain = {}, {}, {}
    for _, id in ipairs(ids) do
      local v = tonumber(id)
      if v and not seen[v] then
        seen[v] = true
        nums[#nums + 1] = v
      end
    end
    table.sort(nums)
    local i = 1
    while i <= #nums do
      local r, first, c = run_holding(nums[i])
      if not r then
        plain[#plain + 1] = tostring(nums[i])
        i = i + 1
      else
        local j = i
        while j <= #nums and nums[j] < first + c do j = j + 1 end
        local h = redis.call('HGET', HOLDER, r)
        if ours(h) then
          if j - i == c then
            mine[#mine + 1] = r
            if #h > 1 then gone[#gone + 1] = byh(string.sub(h, 2), r) end
            runs[#runs + 1] = r
            n = n + c
            if h == th or h == 'T' then taken = taken + c end
          else
            explode(r)
            for k = i, j - 1 do plain[#plain + 1] = tostring(nums[k]) end
          end
        end
        i = j
      end
    end
    ids = plain
  end
  if #ids > 0 then
    local hs = call_many('HMGET', HOLDER, ids)
    local seen = {}
    for i, h in ipairs(hs) do
      local id = ids[i]
      if not seen[id] and ours(h) then
        seen[id] = true
        mine[#mine + 1] = id
        if #h > 1 then gone[#gone + 1] = byh(string.sub(h, 2), id) end
        n = n + 1
        if h == th or h == 'T' then taken = taken + 1 end
      end
    end
  end
  if n == 0 then return 0 end
  if #runs > 0 then call_many('ZREM', RUNS, runs) end
  call_many('ZREM', OUT, mine)
  call_many('HDEL', HOLDER, mine)
  if #gone > 0 then call_many('ZREM', BYHOLDER, gone) end
  call_many('HDEL', MSG, mine)
  -- Attempts and order keys: only for messages given back (or priority).
  if redis.call('EXISTS', ATT) == 1 then call_many('HDEL', ATT, mine) end
  if redis.call('EXISTS', SK) == 1 then call_many('HDEL', SK, mine) end
  if taken > 0 then incr('ntaken', -taken) end
  if n > taken then incr('nleased', taken - n) end
  incr('done', n)
  if incr('unfinished', -n) == 0 then tell_joiners() end
  keep_alive()
  return n
end

OPS['nack'] = function()
  -- ARGV: holder, id, delay ms[, 'unstarted']
  local holder, id, delay = ARGV[2], ARGV[3], num(ARGV[4], 0)
  local unstarted = ARGV[5] == 'unstarted'
  if not exists() then return redis.error_reply('NOQUEUE no such queue') end
  local kind = advance()
  unrun(id)
  if held_by(id, holder) ~= 'L' then return redis.error_reply('NOTLEASED this client holds no such lease') end
  unout(id)
  incr('nacked')
  give_back(kind, id, delay, unstarted)
  advance()
  return redis.status_reply('OK')
end

OPS['touch'] = function()
  -- ARGV: holder, id, lease ms
  local holder, id, lease = ARGV[2], ARGV[3], num(ARGV[4], 0)
  if not exists() then return redis.error_reply('NOQUEUE no such queue') end
  advance()
  unrun(id)
  if not held_by(id, holder) then return redis.error_reply('NOTLEASED this client holds no such lease') end
  -- A bound lease lives with its holder unless the queue times leases.
  if num(redis.call('ZSCORE', OUT, id), 0) < NEVER then
    redis.call('ZADD', OUT, now + lease, id)
    due_at(now + lease)
  end
  return lease
end

OPS['renew'] = function()
  -- ARGV: heartbeat ms, then holders. They are alive: each one's place in
  -- LIVE is good for another heartbeat (and dead holders are swept).
  -- Replies how many dead letters wait to move.
  if not exists() then return 0 end
  local until_ms, zargs = now + num(ARGV[2], 0), {}
  for i = 3, #ARGV do
    zargs[#zargs + 1] = until_ms
    zargs[#zargs + 1] = ARGV[i]
  end
  if #zargs > 0 then call_many('ZADD', LIVE, zargs) end
  advance()
  return redis.call('LLEN', DEAD)
end

OPS['release'] = function()
  -- ARGV: holder. The holder went away: its leases come back, its takes
  -- count as finished and lost.
  local holder = ARGV[2]
  if not exists() then return 0 end
  local kind = settings()
  local n = end_holder(kind, holder, 'released')
  redis.call('ZREM', LIVE, holder)
  advance()
  return n
end

OPS['dead_pop'] = function()
  -- ARGV: at most n. The dead letters waiting to move: {dead-letter
  -- queue, id, attempts, payload, id, attempts, payload, ...}.
  local dlq = redis.call('HGET', META, 'dead_letter')
  if not dlq then return {} end
  local out = {dlq}
  for _, d in ipairs(redis.call('LPOP', DEAD, num(ARGV[2], 100)) or {}) do
    for _, part in ipairs(unpack_strings(d)) do table.insert(out, part) end
  end
  return out
end

OPS['put_dead'] = function()
  -- ARGV: attempts, payload. A dead letter moving in: past the bound and
  -- a shutdown, with its attempts; once (OWN is its DEDUP key).
  if redis.call('EXISTS', OWN) == 1 then return 0 end
  ensure()
  local kind = advance()
  local ids = admit(kind, {ARGV[3]}, '', 0)
  redis.call('HSET', ATT, ids[1], ARGV[2])
  redis.call('SET', OWN, ids[1], 'PX', 600000)
  serve_getters(kind)
  return ids[1]
end

OPS['len'] = function()
  if not exists() then return 0 end
  advance()
  return qsize()
end

OPS['info'] = function()
  if not exists() then return redis.error_reply('NOQUEUE no such queue') end
  local kind, maxsize, shutdown = advance()
  local m = redis.call('HGETALL', META)
  local h = {}
  for i = 1, #m, 2 do h[m[i]] = m[i + 1] end
  local q = qsize()
  local r = {'name', ARGV[2], 'kind', kind, 'maxsize', maxsize,
    'qsize', q, 'unfinished', num(h.unfinished, 0), 'leased', num(h.nleased, 0), 'taken', num(h.ntaken, 0),
    'delayed', redis.call('ZCARD', DELAYED),
    'waiting_getters', live_count(GREQ),
    'waiting_putters', live_count(PREQ),
    'waiting_joiners', redis.call('ZCOUNT', JOINERS, now, '+inf'),
    'full', (maxsize > 0 and q >= maxsize) and 1 or 0, 'empty', q == 0 and 1 or 0,
    'shutdown', shutdown, 'paused', 0,
    'lease_timeout', num(h.lease_timeout, -1), 'max_attempts', num(h.max_attempts, -1),
    'dead_letter', h.dead_letter or false, 'expire', num(h.expire, -1)}
  for _, k in ipairs({'put', 'delivered', 'redelivered', 'done', 'nacked', 'expired', 'released', 'dead_lettered', 'lost', 'dropped'}) do
    table.insert(r, k)
    table.insert(r, num(h[k], 0))
  end
  return r
end

OPS['peek'] = function()
  -- ARGV: count, name
  if not exists() then return {} end
  local kind = advance()
  local count, entries = num(ARGV[2], 1), {}
  for _, u in ipairs(ready_ids(kind, count, false)) do
    if is_run(u) then
      local first = run_of(u)
      for k, p in ipairs(unpack_strings(redis.call('HGET', MSG, u))) do
        if #entries >= count then break end
        entries[#entries + 1] = {ARGV[3], first + k - 1, p, 0}
      end
    elseif #entries < count then
      entries[#entries + 1] = {ARGV[3], tonumber(u), redis.call('HGET', MSG, u), num(redis.call('HGET', ATT, u), 0)}
    end
  end
  return entries
end

OPS['purge'] = function()
  if not exists() then return 0 end
  local n = 0
  for _, id in ipairs(drain_ready()) do
    forget(id)
    n = n + 1
  end
  for _, id in ipairs(redis.call('ZRANGE', DELAYED, 0, -1)) do
    forget(id)
    n = n + 1
  end
  redis.call('DEL', DELAYED)
  if n > 0 then
    incr('dropped', n)
    if incr('unfinished', -n) == 0 then tell_joiners() end
  end
  advance()
  return n
end

OPS['shutdown'] = function()
  -- ARGV: immediate (1/0)
  ensure()
  local immediate = ARGV[2] == '1'
  if immediate then
    redis.call('HSET', META, 'shutdown', 'immediate')
  elseif redis.call('HGET', META, 'shutdown') == 'no' then
    redis.call('HSET', META, 'shutdown', 'graceful')
  end
  wake_watchers()
  local kind0 = settings()
  make_ready(kind0, by_due(redis.call('ZRANGE', DELAYED, 0, -1, 'WITHSCORES')))
  redis.call('DEL', DELAYED)
  if immediate then
    local n = 0
    for _, id in ipairs(drain_ready()) do
      forget(id)
      n = n + 1
    end
    if n > 0 then
      incr('dropped', n)
      if incr('unfinished', -n) == 0 then tell_joiners() end
    end
  end
  advance()
  return redis.status_reply('OK')
end

OPS['reopen'] = function()
  if not exists() then return redis.error_reply('NOQUEUE no such queue') end
  redis.call('HSET', META, 'shutdown', 'no')
  return redis.status_reply('OK')
end

OPS['drop'] = function()
  if not exists() then return 0 end
  wake_watchers()
  -- Whoever waits sees the queue gone as a shutdown.
  for _, line in ipairs({GLINE, PLINE}) do
    for _, w in ipairs(redis.call('LRANGE', line, 0, -1)) do mail(w, 'S') end
  end
  for _, w in ipairs(redis.call('ZRANGE', JOINERS, 0, -1)) do mail(w, 'J') end
  redis.call('DEL', META, READY, MSG, ATT, SK, OUT, HOLDER, DELAYED, DEAD, GLINE, PLINE, JOINERS, GREQ, PREQ, FRESH, OFFERS, OFFERX, LIVE, BYHOLDER, RUNS, KEYS[21])
  -- The waiters' mail stays to be read, for as long as mail does.
  redis.call('PEXPIRE', MAIL, MAIL_MS)
  redis.call('PEXPIRE', MAILX, MAIL_MS)
  return 1
end


-- The reply, and the lists of the waiters mailed to wake (see the
-- header): {"WOKE", reply, list...}. An error goes alone (its waiters
-- wake at their nap).
local function woke(r)
  if #WOKEN == 0 or (type(r) == 'table' and r.err) then return r end
  local out, seen = {'WOKE', r}, {}
  for _, k in ipairs(WOKEN) do
    if not seen[k] then
      seen[k] = true
      out[#out + 1] = k
    end
  end
  return out
end

local function queue(keys, args)
  KEYS, ARGV = keys, args
  META, READY, MSG, ATT, SK, OUT, HOLDER, DELAYED, DEAD = keys[1], keys[2], keys[3], keys[4], keys[5], keys[6], keys[7], keys[8], keys[9]
  GLINE, PLINE, JOINERS, GREQ, PREQ, FRESH = keys[10], keys[11], keys[12], keys[13], keys[14], keys[15]
  OFFERS, OFFERX, LIVE, BYHOLDER, RUNS, OWN = keys[16], keys[17], keys[18], keys[19], keys[20], keys[22]
  MAIL, MAILX, WOKEN = keys[23], keys[24], {}
  PREFIX = string.sub(META, 1, -2)
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local op = ARGV[1]
  local f = OPS[op]
  if not f then return redis.error_reply('ERR unknown queue operation ' .. tostring(op)) end
  return woke(f())
end

redis.register_function('ferry_queue', queue)
