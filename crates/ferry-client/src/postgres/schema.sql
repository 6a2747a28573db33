-- ferry's queues on PostgreSQL: schema version 1, in a schema of its own
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

CREATE TABLE ferry.queues (
    name text PRIMARY KEY,
    kind text NOT NULL DEFAULT 'fifo' CHECK (kind IN ('fifo', 'lifo', 'priority'))
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

-- The channel a queue's waiters listen on (an identifier: at most 63
-- bytes, where a queue's name may have 200).
CREATE FUNCTION ferry.channel(q text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT 'ferry_' || md5(q) $$;

CREATE FUNCTION ferry.ms(n bigint) RETURNS interval
LANGUAGE sql IMMUTABLE AS $$ SELECT n * interval '1 millisecond' $$;

-- The queue's kind; a queue named for the first time is made a fifo.
CREATE FUNCTION ferry.queue_kind(q text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    k text;
BEGIN
    SELECT kind INTO k FROM ferry.queues WHERE name = q;
    IF NOT FOUND THEN
        INSERT INTO ferry.queues (name) VALUES (q) ON CONFLICT (name) DO NOTHING;
        SELECT kind INTO k FROM ferry.queues WHERE name = q;
    END IF;
    RETURN k;
END $$;

-- QPUT, QPUTMANY: the ids, increasing, consecutive for one batch (a
-- session-level advisory lock, not held to the end of the transaction,
-- keeps other batches out of its block of the sequence). With a DEDUP
-- key used in its window: the first put's id, and nothing added (a
-- second put with the key waits for the first's transaction). Each such
-- put also forgets up to 10 keys whose window ended.
CREATE FUNCTION ferry.put(q text, payloads bytea[], okey bytea, delay_ms bigint,
                          kt bytea, dedup_key bytea, dedup_ms bigint)
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    k text := ferry.queue_kind(q);
    n int := cardinality(payloads);
    first bigint;
    held bytea;
BEGIN
    SELECT m.keytype INTO held FROM ferry.messages m WHERE m.queue = q LIMIT 1;
    IF FOUND AND held <> kt THEN
        RAISE EXCEPTION 'KEYTYPE the queue holds messages of another key type';
    END IF;
    IF n = 1 THEN
        first := nextval('ferry.message_ids');
    ELSE
        PERFORM pg_advisory_lock(hashtext('ferry.message_ids'));
        first := nextval('ferry.message_ids');
        PERFORM setval('ferry.message_ids', first + n - 1);
        PERFORM pg_advisory_unlock(hashtext('ferry.message_ids'));
    END IF;
    IF dedup_key IS NOT NULL THEN
        DELETE FROM ferry.dedup d WHERE d.ctid IN (
            SELECT x.ctid FROM ferry.dedup x WHERE x.until < now() LIMIT 10);
        INSERT INTO ferry.dedup AS d (queue, key, first_id, until)
        VALUES (q, dedup_key, first, now() + ferry.ms(dedup_ms))
        ON CONFLICT (queue, key) DO UPDATE
        SET first_id = excluded.first_id, until = excluded.until
        WHERE d.until <= now();
        IF NOT FOUND THEN
            RETURN QUERY SELECT d.first_id FROM ferry.dedup d WHERE d.queue = q AND d.key = dedup_key;
            RETURN;
        END IF;
    END IF;
    INSERT INTO ferry.messages (id, queue, key, seq, payload, due, keytype)
    SELECT first + i - 1, q,
           CASE WHEN k = 'priority' THEN okey ELSE '' END,
           CASE WHEN k = 'lifo' THEN -(first + i - 1) ELSE first + i - 1 END,
           p,
           CASE WHEN delay_ms > 0 THEN now() + ferry.ms(delay_ms) END,
           kt
    FROM unnest(payloads) WITH ORDINALITY AS u(p, i);
    IF delay_ms = 0 THEN
        PERFORM pg_notify(ferry.channel(q), 'put');
    END IF;
    RETURN QUERY SELECT generate_series(first, first + n - 1);
END $$;

-- What time alone gives back: delayed messages that came due, timed
-- leases that ran out and the messages of holders that died (leased:
-- served again, one attempt more; taken: lost).
CREATE FUNCTION ferry.reclaim(q text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ferry.messages m SET due = NULL
    WHERE m.queue = q AND m.due <= now() AND m.holder IS NULL;
    UPDATE ferry.messages m SET holder = NULL, lease_until = NULL, attempts = m.attempts + 1
    WHERE m.queue = q AND m.lease_until <= now();
    DELETE FROM ferry.messages m USING ferry.holders h
    WHERE m.queue = q AND m.holder = h.holder AND h.alive_until <= now() AND m.taken;
    UPDATE ferry.messages m SET holder = NULL, attempts = m.attempts + 1
    FROM ferry.holders h
    WHERE m.queue = q AND m.holder = h.holder AND h.alive_until <= now();
END $$;

-- QGET q COUNT n, one try: what it got, in the queue's order. mode:
-- lease (bound to `who`), timed (LEASE lease_ms), take or noack.
CREATE FUNCTION ferry.get(q text, n int, mode text, who text, lease_ms bigint)
RETURNS TABLE (id bigint, payload bytea, attempts int)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ferry.reclaim(q);
    IF mode = 'noack' THEN
        RETURN QUERY
        WITH c AS (
            SELECT m.id FROM ferry.messages m
            WHERE m.queue = q AND m.holder IS NULL AND m.due IS NULL
            ORDER BY m.key, m.seq LIMIT n FOR UPDATE SKIP LOCKED
        ), d AS (
            DELETE FROM ferry.messages m USING c WHERE m.id = c.id
            RETURNING m.id, m.payload, m.attempts, m.key, m.seq
        )
        SELECT d.id, d.payload, d.attempts FROM d ORDER BY d.key, d.seq;
        IF NOT EXISTS (SELECT 1 FROM ferry.messages m WHERE m.queue = q) THEN
            PERFORM pg_notify(ferry.channel(q), 'joined');
        END IF;
    ELSE
        RETURN QUERY
        WITH c AS (
            SELECT m.id FROM ferry.messages m
            WHERE m.queue = q AND m.holder IS NULL AND m.due IS NULL
            ORDER BY m.key, m.seq LIMIT n FOR UPDATE SKIP LOCKED
        ), u AS (
            UPDATE ferry.messages m
            SET holder = CASE WHEN mode = 'timed' THEN '' ELSE who END,
                taken = (mode = 'take'),
                lease_until = CASE WHEN mode = 'timed' THEN now() + ferry.ms(lease_ms) END
            FROM c WHERE m.id = c.id
            RETURNING m.id, m.payload, m.attempts, m.key, m.seq
        )
        SELECT u.id, u.payload, u.attempts FROM u ORDER BY u.key, u.seq;
    END IF;
END $$;

-- Milliseconds until time alone may give `q` something (a delay comes
-- due, a lease or a holder runs out); null if nothing will.
CREATE FUNCTION ferry.next_change_ms(q text) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT greatest(0, ceil(extract(epoch FROM (min(t) - now())) * 1000))::bigint
    FROM (
        SELECT min(m.due) AS t FROM ferry.messages m WHERE m.queue = q AND m.due IS NOT NULL
        UNION ALL
        SELECT min(m.lease_until) FROM ferry.messages m WHERE m.queue = q AND m.lease_until IS NOT NULL
        UNION ALL
        SELECT min(h.alive_until) FROM ferry.holders h
        WHERE EXISTS (SELECT 1 FROM ferry.messages m WHERE m.queue = q AND m.holder = h.holder)
    ) AS s
$$;

-- QDONE: how many of `ids` it finished (held by `who`, or timed leases).
CREATE FUNCTION ferry.done(q text, ids bigint[], who text) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    n int;
BEGIN
    DELETE FROM ferry.messages m
    WHERE m.queue = q AND m.id = ANY (ids) AND (m.holder = who OR m.holder = '');
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 AND NOT EXISTS (SELECT 1 FROM ferry.messages m WHERE m.queue = q) THEN
        PERFORM pg_notify(ferry.channel(q), 'joined');
    END IF;
    RETURN n;
END $$;

-- QNACK: the message back for another try (one attempt more, unless it
-- was never started), served next or after the delay.
CREATE FUNCTION ferry.nack(q text, mid bigint, who text, delay_ms bigint, unstarted boolean)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ferry.messages m
    SET holder = NULL, lease_until = NULL,
        attempts = m.attempts + CASE WHEN unstarted THEN 0 ELSE 1 END,
        due = CASE WHEN delay_ms > 0 THEN now() + ferry.ms(delay_ms) END
    WHERE m.queue = q AND m.id = mid AND (m.holder = who OR m.holder = '') AND NOT m.taken;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'NOTLEASED no such message leased by this client';
    END IF;
    IF delay_ms = 0 THEN
        PERFORM pg_notify(ferry.channel(q), 'put');
    END IF;
END $$;

-- A holder is alive for `ms` more (its process's heartbeat).
CREATE FUNCTION ferry.renew(who text, ms bigint) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO ferry.holders (holder, alive_until) VALUES (who, now() + ferry.ms(ms))
    ON CONFLICT (holder) DO UPDATE SET alive_until = excluded.alive_until
$$;

-- A client that goes gives back at once what it held: leased messages
-- are served again (one attempt more), taken ones are lost.
CREATE FUNCTION ferry.release(who text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    q text;
BEGIN
    DELETE FROM ferry.messages m WHERE m.holder = who AND m.taken;
    FOR q IN
        UPDATE ferry.messages m SET holder = NULL, attempts = m.attempts + 1
        WHERE m.holder = who RETURNING m.queue
    LOOP
        PERFORM pg_notify(ferry.channel(q), 'put');
    END LOOP;
    DELETE FROM ferry.holders WHERE holder = who;
END $$;

-- QINFO's counts, as (field, value) rows.
CREATE FUNCTION ferry.info(q text)
RETURNS TABLE (qsize bigint, unfinished bigint, leased bigint, taken bigint, delayed bigint)
LANGUAGE sql STABLE AS $$
    SELECT count(*) FILTER (WHERE m.holder IS NULL AND m.due IS NULL),
           count(*),
           count(*) FILTER (WHERE m.holder IS NOT NULL AND NOT m.taken),
           count(*) FILTER (WHERE m.taken),
           count(*) FILTER (WHERE m.due IS NOT NULL)
    FROM ferry.messages m WHERE m.queue = q
$$;
