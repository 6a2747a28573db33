-- ferry's queues on PostgreSQL (the schema version is in mod.rs), in a schema of its own
-- (`ferry`). The client installs it on first use, in one transaction
-- under an advisory lock (postgres/mod.rs), so two clients starting at
-- once do not race; a later version migrates from this one there.
--
-- One row per message. A message is ready when nobody holds it and it
-- is not delayed; a get claims ready rows with FOR UPDATE SKIP LOCKED, in
-- the queue's order (key, then seq: fifo and priority by id, lifo by -id;
-- priority queues' keys are the broker's order keys, bytes compared).
-- Counts are the rows themselves — unfinished is every row of the queue,
-- so a put in a transaction that is still open is not counted and one
-- that rolls back never was — and no operation locks the queue's row, so
-- a put inside a caller's transaction holds up nobody else's.
--
-- Holders: a get's lease is bound to its holder (a client), which the
-- client's process keeps alive in `holders` (every third of `?lease`);
-- once a holder is overdue, what it held comes back, as on Redis. A
-- timed lease (LEASE ms) has holder '' (anyone may finish it by id) and
-- comes back when lease_until passes.
--
-- Waits: every change that may end a wait notifies the queue's channel
-- (ferry.channel), delivered when its transaction commits; a waiter
-- listens before it tries, and tries again when notified.
--
-- Errors a client acts on are raised as '<CODE> <message>' (NOTLEASED,
-- SHUTDOWN, ...), the broker's codes.

CREATE SCHEMA IF NOT EXISTS ferry;

CREATE TABLE ferry.schema_version (version int NOT NULL);

-- A queue's settings (QCREATE, QCONFIG; a queue named first by a put or
-- a get is an unbounded fifo), and its shutdown. Durations in ms, 0:
-- none.
CREATE TABLE ferry.queues (
    name text PRIMARY KEY,
    kind text NOT NULL DEFAULT 'fifo' CHECK (kind IN ('fifo', 'lifo', 'priority')),
    -- Made by QCREATE (whose settings a later QCREATE must match).
    explicit boolean NOT NULL DEFAULT false,
    maxsize bigint NOT NULL DEFAULT 0,
    lease_timeout bigint NOT NULL DEFAULT 0,
    max_attempts bigint NOT NULL DEFAULT 0,
    dead_letter text,
    expire bigint NOT NULL DEFAULT 0,
    shutdown text NOT NULL DEFAULT 'no' CHECK (shutdown IN ('no', 'graceful', 'immediate'))
);

CREATE SEQUENCE ferry.message_ids;

CREATE TABLE ferry.messages (
    id bigint PRIMARY KEY,
    queue text NOT NULL,
    key bytea NOT NULL,
    seq bigint NOT NULL,
    payload bytea,
    -- Delayed until then (null: not delayed).
    due timestamptz,
    -- Who has it out (null: it waits to be served); '' a timed lease.
    holder text,
    -- Got with TAKE: never served again; lost if its holder dies.
    taken boolean NOT NULL DEFAULT false,
    lease_until timestamptz,
    -- A timed lease's length (QTOUCH without LEASE renews it by that).
    lease_ms bigint,
    attempts int NOT NULL DEFAULT 0,
    -- KEYTYPE: every message of a queue has the same.
    keytype bytea NOT NULL DEFAULT ''
);
CREATE INDEX messages_ready ON ferry.messages (queue, key, seq) WHERE holder IS NULL AND due IS NULL;
CREATE INDEX messages_due ON ferry.messages (queue, due) WHERE due IS NOT NULL;
CREATE INDEX messages_queue ON ferry.messages (queue);
CREATE INDEX messages_holder ON ferry.messages (holder) WHERE holder IS NOT NULL;
CREATE INDEX messages_lease ON ferry.messages (queue, lease_until) WHERE lease_until IS NOT NULL;

-- DEDUP keys: a put with a key used in its window replies the first
-- put's id and adds nothing.
CREATE TABLE ferry.dedup (
    queue text NOT NULL,
    key bytea NOT NULL,
    first_id bigint NOT NULL,
    until timestamptz NOT NULL,
    PRIMARY KEY (queue, key)
);
CREATE INDEX dedup_until ON ferry.dedup (until);

CREATE TABLE ferry.holders (
    holder text PRIMARY KEY,
    alive_until timestamptz NOT NULL
);
CREATE INDEX holders_alive ON ferry.holders (alive_until);

-- Locks (LOCK, UNLOCK, LOCKED): one row per held lock. A lock without a
-- TTL lives with its holder's heartbeat; tokens come from one sequence,
-- so each grant's is larger than any before.
CREATE SEQUENCE ferry.tokens;
CREATE TABLE ferry.locks (
    name text PRIMARY KEY,
    holder text NOT NULL,
    token bigint NOT NULL,
    until timestamptz
);
CREATE INDEX locks_holder ON ferry.locks (holder);

-- Events (EVSET, EVCLEAR, EVISSET, EVWAIT): a flag, and how many times it
-- was set, so that a waiter woken by a set answers 1 even if the flag was
-- cleared before it looked.
CREATE TABLE ferry.events (
    name text PRIMARY KEY,
    is_set boolean NOT NULL,
    generation bigint NOT NULL
);

-- Who waits, and on what: a get, put or join on a queue, a lock or an
-- event on its name — counted by QINFO and INFO. A row is renewed by each
-- try of its wait and dropped when the wait ends; one whose client died
-- (or whose wait was dropped unfinished) goes once `until` passes.
CREATE TABLE ferry.waiters (
    id bigserial PRIMARY KEY,
    kind text NOT NULL,
    name text NOT NULL,
    until timestamptz NOT NULL
);
CREATE INDEX waiters_name ON ferry.waiters (name, kind);
