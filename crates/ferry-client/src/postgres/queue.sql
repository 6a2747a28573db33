-- ferry's queue operations on PostgreSQL: one function per operation
-- (after schema.sql, in the same transaction). Each is called in a
-- transaction of its own, or a caller's (a put in the user's
-- transaction); none locks a queue's row, except QCREATE and QCONFIG.

-- The channel a queue's waiters listen on (an identifier: at most 63
-- bytes, where a queue's name may have 200).
CREATE FUNCTION ferry.channel(q text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT 'ferry_' || md5(q) $$;

CREATE FUNCTION ferry.ms(n bigint) RETURNS interval
LANGUAGE sql IMMUTABLE AS $$ SELECT n * interval '1 millisecond' $$;

-- Wakes `q`'s waiters once the transaction commits (several changes in
-- one transaction notify once).
CREATE FUNCTION ferry.wake(q text) RETURNS void
LANGUAGE sql AS $$ SELECT pg_notify(ferry.channel(q), '') $$;

-- The queue's row; a queue named for the first time is made a fifo.
CREATE FUNCTION ferry.queue(q text) RETURNS ferry.queues
LANGUAGE plpgsql AS $$
DECLARE
    r ferry.queues;
BEGIN
    SELECT * INTO r FROM ferry.queues WHERE name = q;
    IF NOT FOUND THEN
        INSERT INTO ferry.queues (name) VALUES (q) ON CONFLICT (name) DO NOTHING;
        SELECT * INTO r FROM ferry.queues WHERE name = q;
    END IF;
    RETURN r;
END $$;

-- Ready messages (Python's qsize()), counted up to `upto` (a bounded
-- queue's check need not count past its maxsize).
CREATE FUNCTION ferry.qsize(q text, upto bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT count(*) FROM (
        SELECT 1 FROM ferry.messages m
        WHERE m.queue = q AND m.holder IS NULL AND m.due IS NULL LIMIT upto
    ) AS x
$$;

-- QCREATE (explicit) and QCONFIG: `named` holds the settings named, as
-- text. A second QCREATE must match what the first set (-EXISTS names
-- each difference); a queue made by first use takes them.
CREATE FUNCTION ferry.create(q text, by_create boolean, named jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r ferry.queues := ferry.queue(q);
    diffs text[] := '{}';
    k text;
    have text;
    want text;
BEGIN
    SELECT * INTO r FROM ferry.queues WHERE name = q FOR UPDATE;
    IF by_create AND r.explicit THEN
        -- In the broker's order.
        FOREACH k IN ARRAY ARRAY['maxsize', 'kind', 'lease_timeout', 'max_attempts',
                                 'dead_letter', 'expire'] LOOP
            CONTINUE WHEN NOT named ? k;
            want := named->>k;
            IF k NOT IN ('kind', 'dead_letter') THEN
                want := want::bigint::text;
            END IF;
            have := CASE k
                WHEN 'kind' THEN r.kind
                WHEN 'maxsize' THEN r.maxsize::text
                WHEN 'lease_timeout' THEN r.lease_timeout::text
                WHEN 'max_attempts' THEN r.max_attempts::text
                WHEN 'dead_letter' THEN coalesce(r.dead_letter, '')
                WHEN 'expire' THEN r.expire::text
            END;
            IF have IS DISTINCT FROM want THEN
                diffs := diffs || (k || ' ' || have || ', not ' || want);
            END IF;
        END LOOP;
        IF cardinality(diffs) > 0 THEN
            RAISE EXCEPTION 'EXISTS queue % exists with %', q, array_to_string(diffs, ', ');
        END IF;
        RETURN;
    END IF;
    IF named ? 'kind' AND named->>'kind' <> r.kind
       AND EXISTS (SELECT 1 FROM ferry.messages m WHERE m.queue = q AND m.holder IS NULL) THEN
        RAISE EXCEPTION 'ERR KIND can change only while the queue is empty';
    END IF;
    UPDATE ferry.queues SET
        kind = coalesce(named->>'kind', kind),
        maxsize = coalesce((named->>'maxsize')::bigint, maxsize),
        lease_timeout = coalesce((named->>'lease_timeout')::bigint, lease_timeout),
        max_attempts = coalesce((named->>'max_attempts')::bigint, max_attempts),
        dead_letter = CASE WHEN named ? 'dead_letter' THEN nullif(named->>'dead_letter', '')
                           ELSE dead_letter END,
        expire = coalesce((named->>'expire')::bigint, expire),
        explicit = explicit OR by_create
    WHERE name = q;
    -- A larger maxsize admits waiting puts.
    PERFORM ferry.wake(q);
END $$;

-- QPUT, QPUTMANY: the ids, increasing (a batch's are consecutive unless
-- other puts took ids meanwhile); none if the queue is full (the caller
-- waits, or replies FULL). A bounded queue's puts take its put lock to
-- the end of their transaction, so that two cannot both take its last
-- room. With a DEDUP key used in its window: the first put's id, and
-- nothing added — looked up first, so that a put sent again after its
-- reply was lost is answered even when the queue is full or shut down
-- by now (a second put with the key waits for the first's transaction).
-- Each keyed put also forgets up to 10 keys whose window ended.
CREATE FUNCTION ferry.put(q text, payloads bytea[], okey bytea, delay_ms bigint,
                          kt bytea, dedup_key bytea, dedup_ms bigint)
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    r ferry.queues := ferry.queue(q);
    n int := cardinality(payloads);
    ids bigint[];
    held bytea;
BEGIN
    IF dedup_key IS NOT NULL THEN
        RETURN QUERY SELECT d.first_id FROM ferry.dedup d
            WHERE d.queue = q AND d.key = dedup_key AND d.until > now();
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    IF r.shutdown <> 'no' THEN
        RAISE EXCEPTION 'SHUTDOWN queue % is shut down', q;
    END IF;
    IF r.maxsize > 0 THEN
        IF n > r.maxsize THEN
            RAISE EXCEPTION 'ERR more payloads than the queue''s maxsize';
        END IF;
        PERFORM pg_advisory_xact_lock(hashtext('ferry.put'), hashtext(q));
        IF ferry.qsize(q, r.maxsize) + n > r.maxsize THEN
            RETURN;
        END IF;
    END IF;
    -- Taken messages are their takers' now, and an untyped one compares
    -- with nothing: only typed items that may be served again must match.
    IF kt <> '' THEN
        SELECT m.keytype INTO held FROM ferry.messages m
        WHERE m.queue = q AND NOT m.taken AND m.keytype <> '' LIMIT 1;
        IF FOUND AND held <> kt THEN
            RAISE EXCEPTION 'KEYTYPE the queue holds items ordered as %; this one is %',
                encode(held, 'escape'), encode(kt, 'escape');
        END IF;
    END IF;
    ids := ARRAY(SELECT nextval('ferry.message_ids') FROM generate_series(1, n));
    IF dedup_key IS NOT NULL THEN
        DELETE FROM ferry.dedup d WHERE d.ctid IN (
            SELECT x.ctid FROM ferry.dedup x WHERE x.until < now() LIMIT 10
            FOR UPDATE SKIP LOCKED);
        INSERT INTO ferry.dedup AS d (queue, key, first_id, until)
        VALUES (q, dedup_key, ids[1], now() + ferry.ms(dedup_ms))
        ON CONFLICT (queue, key) DO UPDATE
        SET first_id = excluded.first_id, until = excluded.until
        WHERE d.until <= now();
        IF NOT FOUND THEN
            RETURN QUERY SELECT d.first_id FROM ferry.dedup d
                WHERE d.queue = q AND d.key = dedup_key;
            RETURN;
        END IF;
    END IF;
    INSERT INTO ferry.messages (id, queue, key, seq, payload, due, keytype)
    SELECT ids[i], q,
           CASE WHEN r.kind = 'priority' THEN okey ELSE '' END,
           CASE WHEN r.kind = 'lifo' THEN -ids[i] ELSE ids[i] END,
           p,
           CASE WHEN delay_ms > 0 THEN now() + ferry.ms(delay_ms) END,
           kt
    FROM unnest(payloads) WITH ORDINALITY AS u(p, i);
    IF delay_ms = 0 THEN
        PERFORM ferry.wake(q);
    END IF;
    RETURN QUERY SELECT unnest(ids);
END $$;

-- After messages came back (nack, expiry, a holder gone): those returned
-- `attempts >= max_attempts` times leave — to the dead letter queue (new
-- messages there) or dropped — and on a queue shut down IMMEDIATE every
-- one does.
CREATE FUNCTION ferry.bury(q text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r ferry.queues;
    dl ferry.queues;
BEGIN
    SELECT * INTO r FROM ferry.queues WHERE name = q;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- After QSHUTDOWN IMMEDIATE, what comes back is dropped, as what was
    -- ready was (each counted finished, so QJOIN returns).
    IF r.shutdown = 'immediate' THEN
        DELETE FROM ferry.messages m WHERE m.queue = q AND m.holder IS NULL;
        PERFORM ferry.wake(q);
        RETURN;
    END IF;
    IF r.max_attempts = 0 THEN
        RETURN;
    END IF;
    IF r.dead_letter IS NOT NULL THEN
        dl := ferry.queue(r.dead_letter);
    END IF;
    WITH dead AS (
        DELETE FROM ferry.messages m
        WHERE m.queue = q AND m.holder IS NULL AND m.attempts >= r.max_attempts
        RETURNING m.payload, m.attempts, m.keytype
    ), moved AS (
        SELECT nextval('ferry.message_ids') AS id, d.* FROM dead d WHERE r.dead_letter IS NOT NULL
    )
    INSERT INTO ferry.messages (id, queue, key, seq, payload, attempts, keytype)
    SELECT moved.id, r.dead_letter, '',
           CASE WHEN dl.kind = 'lifo' THEN -moved.id ELSE moved.id END,
           moved.payload, moved.attempts, moved.keytype
    FROM moved;
    IF r.dead_letter IS NOT NULL THEN
        PERFORM ferry.wake(r.dead_letter);
    END IF;
END $$;

-- What time alone gives back: delayed messages that came due, leases
-- that ran out and the messages of holders that died (leased: served
-- again, one attempt more; taken: lost).
CREATE FUNCTION ferry.reclaim(q text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    back int;
BEGIN
    UPDATE ferry.messages m SET due = NULL
    WHERE m.queue = q AND m.due <= now() AND m.holder IS NULL;
    DELETE FROM ferry.messages m USING ferry.holders h
    WHERE m.queue = q AND m.holder = h.holder AND h.alive_until <= now() AND m.taken;
    IF FOUND THEN
        PERFORM ferry.wake(q);
    END IF;
    UPDATE ferry.messages m SET holder = NULL, lease_until = NULL, attempts = m.attempts + 1
    WHERE m.queue = q AND m.lease_until <= now() AND NOT m.taken;
    GET DIAGNOSTICS back = ROW_COUNT;
    UPDATE ferry.messages m SET holder = NULL, lease_until = NULL, attempts = m.attempts + 1
    FROM ferry.holders h
    WHERE m.queue = q AND m.holder = h.holder AND h.alive_until <= now();
    IF back > 0 OR FOUND THEN
        PERFORM ferry.bury(q);
        PERFORM ferry.wake(q);
    END IF;
END $$;

-- QGET q COUNT n, one try: what it got, in the queue's order. mode:
-- lease (bound to `who`), timed (LEASE lease_ms), take or noack.
CREATE FUNCTION ferry.get(q text, n int, mode text, who text, lease_ms bigint)
RETURNS TABLE (id bigint, payload bytea, attempts int)
LANGUAGE plpgsql AS $$
DECLARE
    r ferry.queues;
    deadline timestamptz;
BEGIN
    PERFORM ferry.reclaim(q);
    SELECT * INTO r FROM ferry.queues WHERE name = q;
    IF mode = 'timed' THEN
        deadline := now() + ferry.ms(lease_ms);
    ELSIF mode = 'lease' AND coalesce(r.lease_timeout, 0) > 0 THEN
        deadline := now() + ferry.ms(r.lease_timeout);
    END IF;
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
                lease_until = deadline,
                lease_ms = CASE WHEN mode = 'timed' THEN get.lease_ms END
            FROM c WHERE m.id = c.id
            RETURNING m.id, m.payload, m.attempts, m.key, m.seq
        )
        SELECT u.id, u.payload, u.attempts FROM u ORDER BY u.key, u.seq;
    END IF;
    -- Room for waiting puts; for a noack get, perhaps nothing left.
    IF FOUND AND (coalesce(r.maxsize, 0) > 0 OR mode = 'noack') THEN
        PERFORM ferry.wake(q);
    END IF;
END $$;

-- Why a get that got nothing from `q` must wait, or not: `shut` when
-- the queue is shut down (nothing ready is left: a get fails), and the
-- milliseconds until time alone may give it something (a delay comes
-- due, a lease or a holder runs out; null: nothing will).
CREATE FUNCTION ferry.idle(q text, OUT shut boolean, OUT next_ms bigint)
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT r.shutdown <> 'no' FROM ferry.queues r WHERE r.name = q), false),
        (SELECT greatest(0, ceil(extract(epoch FROM (min(t) - now())) * 1000))::bigint
         FROM (
             SELECT min(m.due) AS t FROM ferry.messages m
             WHERE m.queue = q AND m.due IS NOT NULL
             UNION ALL
             SELECT min(m.lease_until) FROM ferry.messages m
             WHERE m.queue = q AND m.lease_until IS NOT NULL
             UNION ALL
             SELECT min(h.alive_until) FROM ferry.holders h
             WHERE EXISTS (SELECT 1 FROM ferry.messages m WHERE m.queue = q AND m.holder = h.holder)
         ) AS s)
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
    -- Every done wakes the joiners (two dones that finish the last two
    -- messages at once each see the other's still there).
    IF n > 0 THEN
        PERFORM ferry.wake(q);
    END IF;
    RETURN n;
END $$;

-- QNACK: the message back for another try (one attempt more, unless it
-- was never started), served next or after the delay — or to the dead
-- letters, at max_attempts.
CREATE FUNCTION ferry.nack(q text, mid bigint, who text, delay_ms bigint, unstarted boolean)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ferry.messages m
    SET holder = NULL, lease_until = NULL, lease_ms = NULL,
        attempts = m.attempts + CASE WHEN unstarted THEN 0 ELSE 1 END,
        due = CASE WHEN delay_ms > 0 THEN now() + ferry.ms(delay_ms) END
    WHERE m.queue = q AND m.id = mid AND (m.holder = who OR m.holder = '') AND NOT m.taken;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'NOTLEASED no such message leased by this client';
    END IF;
    PERFORM ferry.bury(q);
    PERFORM ferry.wake(q);
END $$;

-- QTOUCH: the lease extended to now + ms (or its own length again);
-- the ms left, -1 for a lease bound to its holder without a timeout.
CREATE FUNCTION ferry.touch(q text, mid bigint, who text, ms bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    r ferry.queues;
    m ferry.messages;
    len bigint;
BEGIN
    SELECT * INTO m FROM ferry.messages x
    WHERE x.queue = q AND x.id = mid AND (x.holder = who OR x.holder = '') AND NOT x.taken
    FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'NOTLEASED no such message leased by this client';
    END IF;
    SELECT * INTO r FROM ferry.queues WHERE name = q;
    len := coalesce(ms, m.lease_ms, nullif(r.lease_timeout, 0));
    IF len IS NULL THEN
        RETURN -1;
    END IF;
    UPDATE ferry.messages x SET lease_until = now() + ferry.ms(len) WHERE x.id = mid;
    RETURN len;
END $$;

-- QPEEK: the next n ready messages, in the order they would be served.
CREATE FUNCTION ferry.peek(q text, n int)
RETURNS TABLE (id bigint, payload bytea, attempts int)
LANGUAGE sql STABLE AS $$
    SELECT m.id, m.payload, m.attempts FROM ferry.messages m
    WHERE m.queue = q AND m.holder IS NULL AND m.due IS NULL
    ORDER BY m.key, m.seq LIMIT n
$$;

-- QPURGE: drops every ready and delayed message; how many.
CREATE FUNCTION ferry.purge(q text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    DELETE FROM ferry.messages m WHERE m.queue = q AND m.holder IS NULL;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM ferry.wake(q);
    RETURN n;
END $$;

-- QSHUTDOWN: puts refused; delayed messages ready now; gets drain what
-- is ready, then fail. `immediate` also drops what is ready.
CREATE FUNCTION ferry.shutdown(q text, immediate boolean) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ferry.queue(q);
    UPDATE ferry.queues SET shutdown = CASE WHEN immediate THEN 'immediate' ELSE 'graceful' END
    WHERE name = q;
    UPDATE ferry.messages m SET due = NULL WHERE m.queue = q AND m.due IS NOT NULL;
    IF immediate THEN
        DELETE FROM ferry.messages m WHERE m.queue = q AND m.holder IS NULL;
    END IF;
    PERFORM ferry.wake(q);
END $$;

-- QREOPEN: puts accepted again.
CREATE FUNCTION ferry.reopen(q text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ferry.queues SET shutdown = 'no' WHERE name = q;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'NOQUEUE no queue %', q;
    END IF;
END $$;

-- QDROP: the queue and everything in it; 1 if it existed. Its waiters
-- are woken (a get then waits in a queue made again by its wait).
CREATE FUNCTION ferry.drop(q text) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    n int;
BEGIN
    DELETE FROM ferry.messages m WHERE m.queue = q;
    DELETE FROM ferry.queues WHERE name = q;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM ferry.wake(q);
    RETURN n;
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
    FOR q IN
        WITH lost AS (
            DELETE FROM ferry.messages m WHERE m.holder = who AND m.taken RETURNING m.queue
        ), back AS (
            UPDATE ferry.messages m SET holder = NULL, lease_until = NULL, attempts = m.attempts + 1
            WHERE m.holder = who AND NOT m.taken RETURNING m.queue
        )
        SELECT lost.queue FROM lost UNION SELECT back.queue FROM back
    LOOP
        PERFORM ferry.bury(q);
        PERFORM ferry.wake(q);
    END LOOP;
    PERFORM ferry.release_locks(who);
    DELETE FROM ferry.holders WHERE holder = who;
END $$;

-- QINFO: the queue's settings and counts.
CREATE FUNCTION ferry.info(q text)
RETURNS TABLE (kind text, maxsize bigint, shutdown text, lease_timeout bigint,
               max_attempts bigint, dead_letter text, expire bigint,
               qsize bigint, unfinished bigint, leased bigint, taken bigint, delayed bigint)
LANGUAGE sql STABLE AS $$
    SELECT r.kind, r.maxsize, r.shutdown, r.lease_timeout, r.max_attempts, r.dead_letter, r.expire,
           c.*
    FROM ferry.queues r, LATERAL (
        SELECT count(*) FILTER (WHERE m.holder IS NULL AND m.due IS NULL),
               count(*),
               count(*) FILTER (WHERE m.holder IS NOT NULL AND NOT m.taken),
               count(*) FILTER (WHERE m.taken),
               count(*) FILTER (WHERE m.due IS NOT NULL)
        FROM ferry.messages m WHERE m.queue = q
    ) AS c
    WHERE r.name = q
$$;

-- Unfinished messages of `q` (0 for a queue that does not exist).
CREATE FUNCTION ferry.unfinished(q text) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ferry.reclaim(q);
    RETURN (SELECT count(*) FROM ferry.messages m WHERE m.queue = q);
END $$;
