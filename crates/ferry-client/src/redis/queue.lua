-- ferry's queue semantics on Redis: one atomic script for every
-- operation on one queue. Every key shares the queue's hash tag, so a
-- queue lives on one shard of a cluster and many queues spread over it.
--
-- KEYS: 1 meta (hash: settings, counters, id sequence), 2 ready (zset,
-- every score 0: members order the queue byte by byte), 3 msg (hash
-- id -> payload), 4 att (hash id -> attempts), 5 sk (hash id -> ready
-- member), 6 out (zset id -> deadline ms: leased and taken), 7 holder
-- (hash id -> "L<holder>" leased, "T<holder>" taken; an empty holder is a
-- timed lease anyone may finish), 8 delayed (zset id -> due ms), 9 dead
-- (list of dead letters, cmsgpack {id, attempts, payload}), 10-12 the
-- wake-up lists of getters, putters and joiners, 13-15 the waiters of
-- each (zset waiter -> until ms), 16 the operation's own key: a put's
-- DEDUP key, or the holder's set of ids.
--
-- ARGV[1] is the operation; replies are ferry's (see docs/protocol.md),
-- with {"WAIT", ms} where the caller must wait on a wake-up list and try
-- again (it is then registered as a waiter, so no wake-up is lost).

local META, READY, MSG, ATT, SK, OUT, HOLDER, DELAYED, DEAD = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local WGET, WPUT, WJOIN, GETTERS, PUTTERS, JOINERS, OWN = KEYS[10], KEYS[11], KEYS[12], KEYS[13], KEYS[14], KEYS[15], KEYS[16]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function num(v, default)
  if v == false or v == nil or v == '' then return default end
  return tonumber(v)
end

local function be64(n)
  local b = {}
  for i = 8, 1, -1 do
    b[i] = string.char(n % 256)
    n = math.floor(n / 256)
  end
  return table.concat(b)
end

local function incr(field, by)
  return redis.call('HINCRBY', META, field, by or 1)
end

-- The order key as a member prefix: 0x00 escaped as 0x00 0xff, ended by
-- 0x00 0x00, so that key .. id orders as (key, id).
local function escape(key)
  return (string.gsub(key, '%z', '\0\255')) .. '\0\0'
end

-- A ready member: what orders it, then the id (its last 8 bytes).
local function fresh_member(kind, id, key)
  if kind == 'priority' then return '\1' .. escape(key or '') .. be64(id) end
  if kind == 'lifo' then return '\1' .. be64(2 ^ 52 - id) .. be64(id) end
  return '\1' .. be64(id)
end

local function member_id(member)
  local b = {string.byte(member, -8, -1)}
  local id = 0
  for j = 1, 8 do id = id * 256 + b[j] end
  return id
end

-- Where a returned message goes: served next (fifo, lifo; the latest
-- returned first), or by its key (priority).
local function returned_member(kind, id)
  if kind == 'priority' then return redis.call('HGET', SK, id) end
  local seq = incr('retseq', -1)
  return '\0' .. be64(2 ^ 52 + seq) .. be64(id)
end

local function wake(list, waiters, n)
  local w = redis.call('ZCOUNT', waiters, now, '+inf')
  if w == 0 then return end
  if n > w then n = w end
  for _ = 1, n do redis.call('RPUSH', list, '1') end
  redis.call('LTRIM', list, -2 * w, -1)
end

local function wake_all()
  wake(WGET, GETTERS, 1000000)
  wake(WPUT, PUTTERS, 1000000)
  wake(WJOIN, JOINERS, 1000000)
end

local function finish_one()
  if incr('unfinished', -1) == 0 then wake(WJOIN, JOINERS, 1000000) end
end

local function forget(id)
  redis.call('HDEL', MSG, id)
  redis.call('HDEL', ATT, id)
  redis.call('HDEL', SK, id)
end

-- A message is no longer out: its holder record goes, and its count.
-- Replies its kind ('L' leased, 'T' taken), or nil if it was not out.
local function unout(id)
  local h = redis.call('HGET', HOLDER, id)
  if not h then return nil end
  redis.call('ZREM', OUT, id)
  redis.call('HDEL', HOLDER, id)
  local kind = string.sub(h, 1, 1)
  if kind == 'T' then incr('ntaken', -1) else incr('nleased', -1) end
  return kind
end

-- A leased message comes back: one more attempt, then ready at the head
-- (or dead at max_attempts).
local function give_back(kind, id, delay)
  local att = redis.call('HINCRBY', ATT, id, 1)
  local maxatt = num(redis.call('HGET', META, 'max_attempts'), -1)
  if maxatt > 0 and att >= maxatt then
    local payload = redis.call('HGET', MSG, id)
    redis.call('RPUSH', DEAD, cmsgpack.pack({tonumber(id), att, payload}))
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
  local member = returned_member(kind, id)
  redis.call('HSET', SK, id, member)
  if delay and delay > 0 then
    redis.call('ZADD', DELAYED, now + delay, id)
  else
    redis.call('ZADD', READY, 0, member)
    wake(WGET, GETTERS, 1)
  end
end

-- Time passes: delayed messages come due, leases and takes expire.
local function advance(kind)
  local due = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    redis.call('ZREM', DELAYED, id)
    redis.call('ZADD', READY, 0, redis.call('HGET', SK, id))
  end
  if #due > 0 then wake(WGET, GETTERS, #due) end
  local expired = redis.call('ZRANGEBYSCORE', OUT, '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(expired) do
    if unout(id) == 'T' then
      forget(id)
      incr('lost')
      finish_one()
    else
      incr('expired')
      give_back(kind, id, 0)
    end
  end
end

-- How long a waiter may sleep before time alone changes something.
local function next_deadline()
  local hint = 1000
  for _, z in ipairs({DELAYED, OUT}) do
    local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
    if first[2] then
      local ms = tonumber(first[2]) - now
      if ms < hint then hint = ms end
    end
  end
  if hint < 1 then hint = 1 end
  return hint
end

local function qsize() return redis.call('ZCARD', READY) end

local function settings()
  local m = redis.call('HMGET', META, 'kind', 'maxsize', 'shutdown')
  return m[1] or 'fifo', num(m[2], 0), m[3] or 'no'
end

local function exists() return redis.call('EXISTS', META) == 1 end

local function ensure()
  if not exists() then
    redis.call('HSET', META, 'kind', 'fifo', 'maxsize', 0, 'shutdown', 'no', 'seq', 0, 'retseq', 0, 'unfinished', 0)
  end
end

local function register(waiters, waiter, wait_ms)
  if waiter ~= '' then
    redis.call('ZADD', waiters, now + wait_ms + 5000, waiter)
  end
end

local function unregister(waiters, waiter)
  if waiter ~= '' then redis.call('ZREM', waiters, waiter) end
end

local op = ARGV[1]

if op == 'create' then
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
        if k ~= 'kind' and k ~= 'dead_letter' then
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
  wake(WPUT, PUTTERS, 1000000)
  return redis.status_reply('OK')
end

if op == 'config' then
  ensure()
  for i = 2, #ARGV, 2 do redis.call('HSET', META, ARGV[i], ARGV[i + 1]) end
  wake(WPUT, PUTTERS, 1000000)
  return redis.status_reply('OK')
end

if op == 'put' then
  -- ARGV: waiter, wait_ms, key (or ''), keytype (or ''), delay ms, dedup
  -- (1/0), then the payloads.
  local waiter, wait_ms, key, keytype, delay, dedup = ARGV[2], num(ARGV[3], 0), ARGV[4], ARGV[5], num(ARGV[6], 0), ARGV[7] == '1'
  local n = #ARGV - 7
  ensure()
  local kind, maxsize, shutdown = settings()
  advance(kind)
  if shutdown ~= 'no' then
    unregister(PUTTERS, waiter)
    return redis.error_reply('SHUTDOWN queue is shut down')
  end
  if dedup then
    local first = redis.call('GET', OWN)
    if first then
      unregister(PUTTERS, waiter)
      return {tonumber(first)}
    end
  end
  if keytype ~= '' then
    local have = redis.call('HGET', META, 'keytype')
    -- Taken messages are the takers' now: only what may be served again
    -- must compare with the new item.
    local holds = qsize() + redis.call('ZCARD', DELAYED) + num(redis.call('HGET', META, 'nleased'), 0) > 0
    if have and have ~= keytype and holds then
      unregister(PUTTERS, waiter)
      return redis.error_reply('KEYTYPE the queue holds items ordered as ' .. have .. '; this one is ' .. keytype)
    end
    redis.call('HSET', META, 'keytype', keytype)
  end
  if maxsize > 0 and n > maxsize then
    unregister(PUTTERS, waiter)
    return redis.error_reply('ERR more payloads than the queue\'s maxsize')
  end
  if maxsize > 0 and qsize() + n > maxsize then
    if waiter == '' then return redis.error_reply('FULL queue is full') end
    register(PUTTERS, waiter, wait_ms)
    return {'WAIT', next_deadline()}
  end
  unregister(PUTTERS, waiter)
  local ids = {}
  for i = 1, n do
    local id = incr('seq')
    local member = fresh_member(kind, id, key)
    redis.call('HSET', MSG, id, ARGV[7 + i])
    redis.call('HSET', ATT, id, 0)
    redis.call('HSET', SK, id, member)
    if delay > 0 then
      redis.call('ZADD', DELAYED, now + delay, id)
    else
      redis.call('ZADD', READY, 0, member)
    end
    ids[i] = id
  end
  incr('put', n)
  incr('unfinished', n)
  if dedup then redis.call('SET', OWN, ids[1], 'PX', 600000) end
  if delay == 0 then wake(WGET, GETTERS, n) end
  return ids
end

if op == 'get' then
  -- ARGV: waiter, wait_ms, count, mode (lease/timed/take/noack), holder,
  -- lease ms, queue name (for the entries).
  local waiter, wait_ms, count, mode, holder, lease, name = ARGV[2], num(ARGV[3], 0), num(ARGV[4], 1), ARGV[5], ARGV[6], num(ARGV[7], 0), ARGV[8]
  if not exists() then ensure() end
  local kind, maxsize, shutdown = settings()
  advance(kind)
  local members = redis.call('ZRANGE', READY, 0, count - 1)
  if #members == 0 then
    if shutdown ~= 'no' then
      unregister(GETTERS, waiter)
      return redis.error_reply('SHUTDOWN queue is shut down')
    end
    if waiter == '' then return false end
    register(GETTERS, waiter, wait_ms)
    return {'WAIT', next_deadline()}
  end
  unregister(GETTERS, waiter)
  redis.call('ZREM', READY, unpack(members))
  local entries = {}
  for i, member in ipairs(members) do
    local id = member_id(member)
    local payload = redis.call('HGET', MSG, id)
    local att = num(redis.call('HGET', ATT, id), 0)
    entries[i] = {name, id, payload, att}
    if mode == 'noack' then
      forget(id)
      incr('done')
      finish_one()
    elseif mode == 'take' then
      redis.call('HDEL', MSG, id)
      incr('ntaken')
      redis.call('HSET', HOLDER, id, 'T' .. holder)
      redis.call('ZADD', OUT, now + lease, id)
      redis.call('SADD', OWN, id)
    else
      local h = holder
      if mode == 'timed' then h = '' end
      incr('nleased')
      redis.call('HSET', HOLDER, id, 'L' .. h)
      redis.call('ZADD', OUT, now + lease, id)
      if h ~= '' then redis.call('SADD', OWN, id) end
    end
  end
  incr('delivered', #entries)
  if maxsize > 0 then wake(WPUT, PUTTERS, #entries) end
  return entries
end

-- Finishing, giving back, extending: the holder's own, or a timed lease.
local function held_by(id, holder)
  local h = redis.call('HGET', HOLDER, id)
  if not h then return nil end
  local who = string.sub(h, 2)
  if who == '' or who == holder then return string.sub(h, 1, 1) end
  return nil
end

if op == 'done' then
  -- ARGV: holder, ids...
  local holder = ARGV[2]
  local kind = settings()
  advance(kind)
  local finished = 0
  for i = 3, #ARGV do
    local id = ARGV[i]
    if held_by(id, holder) then
      unout(id)
      redis.call('SREM', OWN, id)
      forget(id)
      incr('done')
      finish_one()
      finished = finished + 1
    end
  end
  return finished
end

if op == 'nack' then
  -- ARGV: holder, id, delay ms
  local holder, id, delay = ARGV[2], ARGV[3], num(ARGV[4], 0)
  if not exists() then return redis.error_reply('NOQUEUE no such queue') end
  local kind = settings()
  advance(kind)
  if held_by(id, holder) ~= 'L' then return redis.error_reply('NOTLEASED this client holds no such lease') end
  unout(id)
  redis.call('SREM', OWN, id)
  incr('nacked')
  give_back(kind, id, delay)
  return redis.status_reply('OK')
end

if op == 'touch' then
  -- ARGV: holder, id, lease ms
  local holder, id, lease = ARGV[2], ARGV[3], num(ARGV[4], 0)
  if not exists() then return redis.error_reply('NOQUEUE no such queue') end
  local kind = settings()
  advance(kind)
  if not held_by(id, holder) then return redis.error_reply('NOTLEASED this client holds no such lease') end
  redis.call('ZADD', OUT, now + lease, id)
  return lease
end

if op == 'renew' then
  -- ARGV: holder, lease ms. Every lease and take of the holder (OWN is
  -- its set of ids) is extended; ids no longer its own are forgotten.
  local holder, lease = ARGV[2], num(ARGV[3], 0)
  -- A queue with its own lease timeout keeps it: unless touched, a lease
  -- ends then, as on the broker.
  if num(redis.call('HGET', META, 'lease_timeout'), 0) > 0 then return 0 end
  local renewed = 0
  for _, id in ipairs(redis.call('SMEMBERS', OWN)) do
    local h = redis.call('HGET', HOLDER, id)
    if h and string.sub(h, 2) == holder then
      redis.call('ZADD', OUT, 'XX', now + lease, id)
      renewed = renewed + 1
    else
      redis.call('SREM', OWN, id)
    end
  end
  return renewed
end

if op == 'release' then
  -- ARGV: holder. The holder went away: its leases come back, its takes
  -- count as finished and lost.
  local holder = ARGV[2]
  if not exists() then redis.call('DEL', OWN) return 0 end
  local kind = settings()
  local ids = redis.call('SMEMBERS', OWN)
  table.sort(ids, function(a, b) return tonumber(a) > tonumber(b) end)
  local n = 0
  for _, id in ipairs(ids) do
    local h = redis.call('HGET', HOLDER, id)
    if h and string.sub(h, 2) == holder then
      unout(id)
      if string.sub(h, 1, 1) == 'T' then
        forget(id)
        incr('lost')
        finish_one()
      else
        incr('released')
        give_back(kind, id, 0)
      end
      n = n + 1
    end
  end
  redis.call('DEL', OWN)
  return n
end

if op == 'join' then
  -- ARGV: waiter, wait_ms
  local waiter, wait_ms = ARGV[2], num(ARGV[3], 0)
  if not exists() then return redis.status_reply('OK') end
  advance(settings())
  if num(redis.call('HGET', META, 'unfinished'), 0) == 0 then
    unregister(JOINERS, waiter)
    return redis.status_reply('OK')
  end
  if waiter == '' then return false end
  register(JOINERS, waiter, wait_ms)
  return {'WAIT', next_deadline()}
end

if op == 'unwait' then
  -- ARGV: waiter. It gave up (a timeout, a cancel).
  for _, z in ipairs({GETTERS, PUTTERS, JOINERS}) do redis.call('ZREM', z, ARGV[2]) end
  return 0
end

if op == 'len' then
  if not exists() then return 0 end
  advance(settings())
  return qsize()
end

if op == 'info' then
  if not exists() then return redis.error_reply('NOQUEUE no such queue') end
  local kind, maxsize, shutdown = settings()
  advance(kind)
  local m = redis.call('HGETALL', META)
  local h = {}
  for i = 1, #m, 2 do h[m[i]] = m[i + 1] end
  local leased, taken = num(h.nleased, 0), num(h.ntaken, 0)
  local q = qsize()
  local r = {'name', ARGV[2], 'kind', kind, 'maxsize', maxsize,
    'qsize', q, 'unfinished', num(h.unfinished, 0), 'leased', leased, 'taken', taken,
    'delayed', redis.call('ZCARD', DELAYED),
    'waiting_getters', redis.call('ZCOUNT', GETTERS, now, '+inf'),
    'waiting_putters', redis.call('ZCOUNT', PUTTERS, now, '+inf'),
    'waiting_joiners', redis.call('ZCOUNT', JOINERS, now, '+inf'),
    'full', (maxsize > 0 and q >= maxsize) and 1 or 0, 'empty', q == 0 and 1 or 0,
    'shutdown', shutdown,
    'lease_timeout', num(h.lease_timeout, -1), 'max_attempts', num(h.max_attempts, -1),
    'dead_letter', h.dead_letter or false, 'expire', num(h.expire, -1)}
  for _, k in ipairs({'put', 'delivered', 'done', 'nacked', 'expired', 'released', 'dead_lettered', 'lost', 'dropped'}) do
    table.insert(r, k)
    table.insert(r, num(h[k], 0))
  end
  return r
end

if op == 'peek' then
  -- ARGV: count, name
  if not exists() then return {} end
  advance(settings())
  local members = redis.call('ZRANGE', READY, 0, num(ARGV[2], 1) - 1)
  local entries = {}
  for i, member in ipairs(members) do
    local id = member_id(member)
    entries[i] = {ARGV[3], id, redis.call('HGET', MSG, id), num(redis.call('HGET', ATT, id), 0)}
  end
  return entries
end

if op == 'purge' then
  if not exists() then return 0 end
  local n = 0
  for _, member in ipairs(redis.call('ZRANGE', READY, 0, -1)) do
    forget(member_id(member))
    n = n + 1
  end
  for _, id in ipairs(redis.call('ZRANGE', DELAYED, 0, -1)) do
    forget(id)
    n = n + 1
  end
  redis.call('DEL', READY, DELAYED)
  if n > 0 then
    incr('dropped', n)
    if incr('unfinished', -n) == 0 then wake(WJOIN, JOINERS, 1000000) end
  end
  wake(WPUT, PUTTERS, 1000000)
  return n
end

if op == 'shutdown' then
  -- ARGV: immediate (1/0)
  ensure()
  local kind = settings()
  advance(kind)
  local immediate = ARGV[2] == '1'
  if immediate then
    redis.call('HSET', META, 'shutdown', 'immediate')
  elseif redis.call('HGET', META, 'shutdown') == 'no' then
    redis.call('HSET', META, 'shutdown', 'graceful')
  end
  for _, id in ipairs(redis.call('ZRANGE', DELAYED, 0, -1)) do
    redis.call('ZADD', READY, 0, redis.call('HGET', SK, id))
  end
  redis.call('DEL', DELAYED)
  if immediate then
    local n = 0
    for _, member in ipairs(redis.call('ZRANGE', READY, 0, -1)) do
      forget(member_id(member))
      n = n + 1
    end
    redis.call('DEL', READY)
    if n > 0 then
      incr('dropped', n)
      incr('unfinished', -n)
    end
  end
  wake_all()
  return redis.status_reply('OK')
end

if op == 'reopen' then
  if not exists() then return redis.error_reply('NOQUEUE no such queue') end
  redis.call('HSET', META, 'shutdown', 'no')
  return redis.status_reply('OK')
end

if op == 'drop' then
  if not exists() then return 0 end
  -- Waiters see the queue gone as a shutdown.
  redis.call('HSET', META, 'shutdown', 'immediate')
  wake_all()
  redis.call('DEL', META, READY, MSG, ATT, SK, OUT, HOLDER, DELAYED, DEAD)
  return 1
end

return redis.error_reply('ERR unknown queue operation ' .. tostring(op))
