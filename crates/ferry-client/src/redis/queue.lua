#!lua name=ferry_queue
-- ferry's queue semantics on Redis: one atomic script for every
-- operation on one queue. One library in three files, loaded as one
-- (mod.rs): this one (keys, state, storage), queue_flow.lua (delivery,
-- hand-off, time), queue_ops.lua (the operations). Every key shares the queue's hash tag, so a
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
