#!lua name=ferry_queue
-- ferry's queue semantics on Redis: one atomic script for every
-- operation on one queue. Every key shares the queue's hash tag, so a
-- queue lives on one shard of a cluster and many queues spread over it.
--
-- KEYS: 1 meta (hash: settings, counters, id sequence), 2 ready (zset,
-- every score 0: members order the queue byte by byte, and end with the
-- message's id), 3 msg (hash id -> payload), 4 att (hash id -> attempts),
-- 5 sk (hash id -> its ready member), 6 out (zset id -> deadline ms:
-- leased and taken), 7 holder (hash id -> "L<holder>" leased, "T<holder>"
-- taken; an empty holder is a timed lease anyone may finish), 8 delayed
-- (zset id -> due ms), 9 dead (list of dead letters), 10 the getters'
-- line (list of waiters, first come first served), 11 the putters' line,
-- 12 joiners (zset waiter -> until ms), 13 getters' requests (hash), 14
-- putters' requests (hash), 15 fresh (list of the ids of fifo and lifo
-- messages put and never given back, in put order), 16 offers (hash
-- waiter -> what it is offered, see below), 17 their deadlines (zset
-- waiter -> ms), 18 live (zset holder -> until when it is alive, see
-- below), 19 byholder (zset, every score 0: "<holder>\0<unit>" for
-- each unit out with a holder), 20 runs (see Runs), 21 watch (see
-- wake_watchers), 22 the operation's own key: a put's DEDUP key, 23
-- mail (hash "w<waiter>" -> its mail; "d<DEDUP key>" -> the first id of
-- a put that went in from the line), 24 mailx (zset: mail's field -> when
-- it goes unread). Every key a script touches is among these.
--
-- Keys that go by themselves: a line's keys live a little longer than
-- its longest wait (each waiter renews that as it renews its place), so
-- waiters that all died leave nothing; a queue made by first use (not by
-- QCREATE) that holds nothing goes after AUTO_IDLE_MS unnamed (its
-- counters with it), as a queue with EXPIRE does.
--
-- Holders live by heartbeat: a lease bound to its holder (a get's
-- default) has no deadline of its own; the holder's process renews the
-- holder's place in LIVE (every third of the heartbeat, `?lease`), and
-- once that place is overdue the holder is dead: what it held comes back
-- (leased, one more attempt; taken, lost), and it is offered nothing
-- more. Its place then holds minus the time it died for a minute, so
-- that a waiter of it still in line is known dead. A queue's own LEASE
-- timeout still ends a lease that is not touched in time.
--
-- Waiting is hand-off, as in the broker: a caller that must wait joins a
-- line and blocks on a list of its own (<prefix>w:<waiter>, BLPOP);
-- whatever makes its wait end — a message for a getter, room for a
-- putter, nothing unfinished for a joiner, a shutdown — is decided in the
-- script that causes it and kept in MAIL as the waiter's reply ("mail"),
-- which its next call collects. The script does not touch the waiter's
-- list (it is not among its KEYS): it replies {"WOKE", reply, list...}
-- and the caller pushes a wake-up to each list. A wake-up lost with its
-- caller costs a nap (at most 10 s), never the mail. A waiter leaves the
-- line in one script (unwait), which replies the mail that came first,
-- if any: nothing handed over is lost, and a put that left the line
-- before its room came never happened.
--
-- A getter is not handed messages but offered them: they leave the ready
-- set for OFFERS, it is mailed 'O', and its next call claims them — only
-- then are they delivered (counted, leased, an attempt). A waiter that
-- died (killed, its connection gone in a failover) never claims: after
-- CLAIM_MS its offer goes back where it came from, exactly, no attempt
-- counted, and the next waiter in line is served.
--
-- Runs: a fifo batch put (QPUTMANY, two payloads or more, no delay) is
-- one unit, named "r<first id>.<count>", wherever a message would be
-- named: one MSG field (its payloads, "<len>:<payload>" each), one FRESH
-- entry, and once out one HOLDER field, one OUT member, one member of its
-- holder's set, and one member of RUNS (a zset scored by the first id, to
-- find the run an id belongs to). A batch is so put, got, leased and
-- finished at the cost of one message. A run has attempts 0, is fresh or
-- out, never given back: whatever touches part of it (a get of fewer
-- messages splits it; a nack, touch, partial done, expiry or release
-- breaks it into its messages first, see explode) sees plain messages.
-- META's runextra is the ready runs' messages beyond one each (qsize).
--
-- Mail: 'I' ids ("1,2,3"), 'S' shut down, 'J' joined, 'O' an offer
-- waits (claim it: its entries are the reply, 'E' "<id>,<attempts>,
-- <len>:<payload>" each, or a run's "R<first>,<count>,<len>:<payloads>").
--
-- ARGV[1] is the operation. Replies are ferry's (docs/protocol.md), or
-- {"WAIT", ms}: wait on your list at most ms (then try again: time alone
-- may change something), or {"MAIL", mail}.

-- A function library (FUNCTION LOAD, FCALL ferry_queue): its helpers are
-- made once, at load, not at every call. Each call sets these first.
local KEYS, ARGV, now
local META, READY, MSG, ATT, SK, OUT, HOLDER, DELAYED, DEAD
local GLINE, PLINE, JOINERS, GREQ, PREQ, FRESH, OFFERS, OFFERX, LIVE, BYHOLDER, OWN, PREFIX, RUNS
local MAIL, MAILX, WOKEN

-- How long mail waits to be read: a live waiter reads it within a nap.
local MAIL_MS = 600000

-- How long an offer waits for its getter's claim: a live getter claims
-- within a round trip of its wake-up.
local CLAIM_MS = 2000

-- A bound lease's deadline: none (its holder's heartbeat ends it).
local NEVER = 9e15

local function num(v, default)
  if v == false or v == nil or v == '' then return default end
  return tonumber(v)
end

-- redis.call(cmd, key, list...) in slices: Lua's unpack gives at most
-- ~8000 values, and a batch may be larger. Slices are even, so a
-- field/value pair is never cut. Replies the slices' replies joined (for
-- HMGET).
local SLICE = 4000
local function call_many(cmd, key, list)
  local n = #list
  if n <= SLICE then return redis.call(cmd, key, unpack(list)) end
  local out = {}
  for i = 1, n, SLICE do
    local r = redis.call(cmd, key, unpack(list, i, math.min(i + SLICE - 1, n)))
    if type(r) == 'table' then
      for _, v in ipairs(r) do out[#out + 1] = v end
    end
  end
  return out
end

-- 8 bytes, big-endian: numbers below 2^53 order as their bytes do.
local function be64(n) return struct.pack('>I8', n) end

local function incr(field, by)
  return redis.call('HINCRBY', META, field, by or 1)
end

-- A unit out with a holder, as BYHOLDER's member.
local function byh(holder, unit) return holder .. '\0' .. unit end

-- Units now out with `holder`, in BYHOLDER.
local function index_held(holder, units)
  local bargs = {}
  for i, u in ipairs(units) do
    bargs[2 * i - 1] = 0
    bargs[2 * i] = byh(holder, u)
  end
  call_many('ZADD', BYHOLDER, bargs)
end

-- Every unit out with `holder`.
local function held_units(holder)
  local units = {}
  for i, m in ipairs(redis.call('ZRANGEBYLEX', BYHOLDER, '[' .. holder .. '\0', '(' .. holder .. '\1')) do
    units[i] = string.sub(m, #holder + 2)
  end
  return units
end

-- Mail for a waiter (the first it is sent is its reply), and its list to
-- wake (see the header).
local function mail(waiter, m)
  local f = 'w' .. waiter
  if redis.call('HSETNX', MAIL, f, m) == 1 then
    redis.call('ZADD', MAILX, now + MAIL_MS, f)
  end
  WOKEN[#WOKEN + 1] = PREFIX .. 'w:' .. waiter
end

-- A waiter's mail goes unread.
local function unmail(waiter)
  redis.call('HDEL', MAIL, 'w' .. waiter)
  redis.call('ZREM', MAILX, 'w' .. waiter)
end

-- Mail nobody read in time goes (its waiter died), and so do the DEDUP
-- records of puts that went in from the line, once their window ends.
local function sweep_mail()
  if redis.call('EXISTS', MAILX) == 0 then return end
  local old = redis.call('ZRANGEBYSCORE', MAILX, '-inf', now, 'LIMIT', 0, 1000)
  if #old > 0 then
    call_many('HDEL', MAIL, old)
    call_many('ZREM', MAILX, old)
  end
end

-- Length-prefixed strings, for requests kept in a hash.
local function pack(list)
  local out = {}
  for i, s in ipairs(list) do out[i] = #s .. ':' .. s end
  return table.concat(out)
end

local function unpack_strings(s)
  local out, pos = {}, 1
  while pos <= #s do
    local colon = string.find(s, ':', pos, true)
    local len = tonumber(string.sub(s, pos, colon - 1))
    table.insert(out, string.sub(s, colon + 1, colon + len))
    pos = colon + len + 1
  end
  return out
end

-- The order key as a member prefix: 0x00 escaped as 0x00 0xff, ended by
-- 0x00 0x00, so that key .. id orders as (key, id).
local function escape(key)
  return (string.gsub(key, '%z', '\0\255')) .. '\0\0'
end

-- A priority message's member: its key, then its id.
local function priority_member(id, key)
  return '\1' .. escape(key or '') .. be64(id)
end

local function member_id(member)
  return (struct.unpack('>I8', member, #member - 7))
end

-- A fifo message given back: before every other, the latest first.
local function returned_member(id)
  local seq = incr('retseq', -1)
  return '\0' .. be64(2 ^ 52 + seq) .. be64(id)
end

-- A priority message's member, kept in SK from its put.
local function member_of(id)
  return redis.call('HGET', SK, id) or priority_member(tonumber(id), '')
end

-- Ready messages, in the broker's order (ferry-core's Ready): FRESH, a
-- list, holds fifo and lifo messages in the order they became ready (a
-- put, a delay that ran out; for lifo also one given back: the top of the
-- stack), served from its head (fifo) or its tail (lifo); READY, a sorted
-- set, holds priority messages ordered byte by byte (key, then id) and
-- fifo messages given back, served before FRESH, the latest first.
local function qsize()
  return redis.call('ZCARD', READY) + redis.call('LLEN', FRESH) + num(redis.call('HGET', META, 'runextra'), 0)
end

local function is_run(unit) return string.byte(unit, 1) == 114 end -- 'r'

-- A run's first id and count.
local function run_of(name)
  local dot = string.find(name, '.', 2, true)
  return tonumber(string.sub(name, 2, dot - 1)), tonumber(string.sub(name, dot + 1))
end

-- Stores `c` messages from `first` (their payloads packed): a run, or a
-- plain message if one. Replies its unit.
local function store(first, c, packed)
  if c == 1 then
    local colon = string.find(packed, ':', 1, true)
    local id = tostring(first)
    redis.call('HSET', MSG, id, string.sub(packed, colon + 1))
    return id
  end
  local name = 'r' .. first .. '.' .. c
  redis.call('HSET', MSG, name, packed)
  return name
end

-- A ready run split after its first m messages: the two units.
local function split_run(name, m)
  local first, c = run_of(name)
  local packed = redis.call('HGET', MSG, name)
  local pos = 1
  for _ = 1, m do
    local colon = string.find(packed, ':', pos, true)
    pos = colon + 1 + tonumber(string.sub(packed, pos, colon - 1))
  end
  redis.call('HDEL', MSG, name)
  return store(first, m, string.sub(packed, 1, pos - 1)), store(first + m, c - m, string.sub(packed, pos))
end

-- The first n ready units in serving order (ids as strings: numbers
-- would be formatted again at every call that names them); taken out of
-- the queue if `remove` (a run split if only part of it is wanted), else
-- runs whole (more than n messages, maybe). `origins`, if given, gets
-- where each came from (READY's member, or false: FRESH), for restore.
local function ready_ids(kind, n, remove, origins)
  local ids = {}
  if n <= 0 then return ids end
  if redis.call('ZCARD', READY) > 0 then
    local zs = redis.call('ZRANGE', READY, 0, n - 1)
    for i, member in ipairs(zs) do
      ids[i] = tostring(member_id(member))
      if origins then origins[i] = member end
    end
    if remove and #zs > 0 then call_many('ZREM', READY, zs) end
  end
  local want = n - #ids
  if want <= 0 or kind == 'priority' then return ids end
  local lifo = kind == 'lifo'
  local extra = lifo and 0 or num(redis.call('HGET', META, 'runextra'), 0)
  local got
  if extra > 0 then
    -- Runs in line: at most `want` units hold the messages wanted.
    got = {}
    local units, k, have, delta, rest = redis.call('LRANGE', FRESH, 0, want - 1), 0, 0, 0, nil
    for _, u in ipairs(units) do
      if have >= want then break end
      k = k + 1
      local c = 1
      if is_run(u) then
        local _, rc = run_of(u)
        c = rc
      end
      if remove and have + c > want then
        local head
        head, rest = split_run(u, want - have)
        delta = delta - (c - 1)
        if is_run(rest) then delta = delta + select(2, run_of(rest)) - 1 end
        u, c = head, want - have
      elseif c > 1 then
        delta = delta - (c - 1)
      end
      got[#got + 1] = u
      have = have + c
    end
    if remove then
      redis.call('LPOP', FRESH, k)
      if rest then redis.call('LPUSH', FRESH, rest) end
      incr('runextra', delta)
    end
  elseif remove then
    got = redis.call(lifo and 'RPOP' or 'LPOP', FRESH, want) or {}
  else
    got = redis.call('LRANGE', FRESH, lifo and -want or 0, lifo and -1 or want - 1)
    if lifo then
      local r = {}
      for k = #got, 1, -1 do r[#r + 1] = got[k] end
      got = r
    end
  end
  for _, id in ipairs(got) do
    ids[#ids + 1] = id
    if origins then origins[#ids] = false end
  end
  return ids
end

-- A get that waits on several queues (QGET a OR b) watches each: it is
-- not in their lines (it could be handed two messages), it is woken —
-- PUBLISH ferry:wake:<waiter>, which reaches a cluster's every node — when
-- something becomes ready or the queue shuts down, and tries again.
-- One wake-up per watch.
local function wake_watchers()
  local key = KEYS[21]
  if redis.call('EXISTS', key) == 0 then return end
  for _, w in ipairs(redis.call('ZRANGEBYSCORE', key, now, '+inf')) do
    redis.call('PUBLISH', 'ferry:wake:' .. w, '1')
  end
  redis.call('DEL', key)
end

-- Messages that become ready (a delay ran out, a shutdown), in order: the
-- back of a fifo queue, the top of a lifo one; by key in a priority one.
local function make_ready(kind, ids)
  if #ids == 0 then return end
  wake_watchers()
  if kind == 'priority' then
    for _, id in ipairs(ids) do redis.call('ZADD', READY, 0, member_of(id)) end
  else
    call_many('RPUSH', FRESH, ids)
  end
end

-- Delayed ids in the order they come due: by due time, then by id (the
-- set orders equal times by the ids' text, where "10" < "9").
local function by_due(flat)
  local due = {}
  for k = 1, #flat, 2 do due[#due + 1] = {tonumber(flat[k + 1]), tonumber(flat[k]), flat[k]} end
  table.sort(due, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
  local ids = {}
  for k, d in ipairs(due) do ids[k] = d[3] end
  return ids
end

-- Every ready id (for purge and an immediate shutdown), and none left
-- (a run's payloads go here: its ids have no fields of their own).
local function drain_ready()
  local ids = {}
  for _, member in ipairs(redis.call('ZRANGE', READY, 0, -1)) do ids[#ids + 1] = member_id(member) end
  for _, u in ipairs(redis.call('LRANGE', FRESH, 0, -1)) do
    if is_run(u) then
      local first, c = run_of(u)
      for k = 0, c - 1 do ids[#ids + 1] = tostring(first + k) end
      redis.call('HDEL', MSG, u)
    else
      ids[#ids + 1] = u
    end
  end
  redis.call('DEL', READY, FRESH)
  redis.call('HDEL', META, 'runextra')
  return ids
end

local function settings()
  local m = redis.call('HMGET', META, 'kind', 'maxsize', 'shutdown', 'expire', 'nextdue')
  return m[1] or 'fifo', num(m[2], 0), m[3] or 'no', num(m[4], 0), num(m[5], 0)
end

-- Something comes due at `at` (a delay, a lease): advance looks again then.
-- (Deadlines that move later leave it early: advance then finds nothing,
-- and sets it from the sets again.)
local function due_at(at)
  local next = num(redis.call('HGET', META, 'nextdue'), nil)
  if next == nil or at < next then redis.call('HSET', META, 'nextdue', at) end
end

local function exists() return redis.call('EXISTS', META) == 1 end

-- A sentinel too long for a listpack keeps MSG, HOLDER and OUT in their
-- hash-table and skiplist encodings for the queue's life (they never
-- empty, so never shrink back): a batch of 100 into a small listpack
-- costs O(n) per item, ~100 µs a batch (measured), and the queue's
-- working sets are usually that small. The field '' and the member
-- BIG are no message; OUT's sentinel is due after every lease.
local BIG = '~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~'

local function ensure()
  if not exists() then
    redis.call('HSET', META, 'kind', 'fifo', 'maxsize', 0, 'shutdown', 'no', 'seq', 0, 'retseq', 0, 'unfinished', 0)
    redis.call('HSET', MSG, '', BIG)
    redis.call('HSET', HOLDER, '', BIG)
    redis.call('ZADD', OUT, '9e15', BIG)
  end
end

-- EXPIRE: the queue goes once nobody has named it for that long. Waiters
-- renew their place, and holders their leases, well within it, so a queue
-- someone waits in or holds messages of stays.
-- A queue made by first use goes once it has been idle and empty this
-- long.
local AUTO_IDLE_MS = 600000

local function idle()
  if qsize() > 0 or redis.call('ZCARD', DELAYED) > 0 or redis.call('LLEN', DEAD) > 0 then return false end
  local m = redis.call('HMGET', META, 'nleased', 'ntaken')
  if num(m[1], 0) > 0 or num(m[2], 0) > 0 then return false end
  -- Waiters keep it: they name it (and so renew its keys) every few
  -- seconds, far within AUTO_IDLE_MS.
  return redis.call('EXISTS', OFFERS) == 0
end

-- Every key of the queue's own (not the operation's, 22).
local LASTING = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 23, 24}

local function keep_alive(expire)
  if not exists() then return end
  if expire == nil then expire = num(redis.call('HGET', META, 'expire'), 0) end
  if expire > 0 then
    for _, i in ipairs(LASTING) do redis.call('PEXPIRE', KEYS[i], expire) end
    return
  end
  if redis.call('HGET', META, 'explicit') == '1' then return end
  -- Made by first use: its keys go by themselves while it is idle.
  local was = redis.call('HGET', META, 'idle') == '1'
  local now_idle = idle()
  if now_idle and not was then
    redis.call('HSET', META, 'idle', '1')
    for _, i in ipairs(LASTING) do redis.call('PEXPIRE', KEYS[i], AUTO_IDLE_MS) end
  elseif was and not now_idle then
    redis.call('HDEL', META, 'idle')
    for _, i in ipairs(LASTING) do redis.call('PERSIST', KEYS[i]) end
  elseif now_idle then
    for _, i in ipairs(LASTING) do redis.call('PEXPIRE', KEYS[i], AUTO_IDLE_MS) end
  end
end

-- A line's key lives at least `ms` more (see the header).
local function outlive(key, ms)
  local ttl = redis.call('PTTL', key)
  if ttl == -1 or (ttl >= 0 and ttl < ms) then redis.call('PEXPIRE', key, ms) end
end

local function forget(id)
  redis.call('HDEL', MSG, id)
  redis.call('HDEL', ATT, id)
  redis.call('HDEL', SK, id)
end

-- Joiners are told once nothing is unfinished.
local function tell_joiners()
  for _, w in ipairs(redis.call('ZRANGEBYSCORE', JOINERS, now, '+inf')) do mail(w, 'J') end
  redis.call('DEL', JOINERS)
end

local function finish_one()
  if incr('unfinished', -1) == 0 then tell_joiners() end
end

-- A message is no longer out: its holder record goes, and its count.
-- Replies its kind ('L' leased, 'T' taken), or nil if it was not out.
local function unout(id)
  local h = redis.call('HGET', HOLDER, id)
  if not h then return nil end
  redis.call('ZREM', OUT, id)
  redis.call('HDEL', HOLDER, id)
  local who = string.sub(h, 2)
  if who ~= '' then redis.call('ZREM', BYHOLDER, byh(who, id)) end
  local k = string.sub(h, 1, 1)
  if k == 'T' then incr('ntaken', -1) else incr('nleased', -1) end
  return k
end

-- An out run broken into its messages, each out as the run was: its ids.
local function explode(name)
  local first, c = run_of(name)
  local ids = {}
  for k = 1, c do ids[k] = tostring(first + k - 1) end
  local packed = redis.call('HGET', MSG, name)
  if packed then
    local margs = {}
    for k, p in ipairs(unpack_strings(packed)) do
      margs[2 * k - 1] = ids[k]
      margs[2 * k] = p
    end
    call_many('HSET', MSG, margs)
    redis.call('HDEL', MSG, name)
  end
  local tag = redis.call('HGET', HOLDER, name)
  local deadline = redis.call('ZSCORE', OUT, name)
  if tag and deadline then
    local hargs, oargs = {}, {}
    for k, id in ipairs(ids) do
      hargs[2 * k - 1] = id
      hargs[2 * k] = tag
      oargs[2 * k - 1] = deadline
      oargs[2 * k] = id
    end
    call_many('HSET', HOLDER, hargs)
    call_many('ZADD', OUT, oargs)
    local who = string.sub(tag, 2)
    if who ~= '' then
      index_held(who, ids)
      redis.call('ZREM', BYHOLDER, byh(who, name))
    end
  end
  redis.call('HDEL', HOLDER, name)
  redis.call('ZREM', OUT, name)
  redis.call('ZREM', RUNS, name)
  return ids
end

-- The out run holding message `id`, if any (and the run's count).
local function run_holding(id)
  if redis.call('EXISTS', RUNS) == 0 then return nil end
  local r = redis.call('ZREVRANGEBYSCORE', RUNS, id, '-inf', 'LIMIT', 0, 1)[1]
  if not r then return nil end
  local first, c = run_of(r)
  if tonumber(id) < first + c then return r, first, c end
  return nil
end

-- Message `id` as a plain message, if it was in an out run.
local function unrun(id)
  local r = run_holding(id)
  if r then explode(r) end
end

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
