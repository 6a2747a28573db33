-- Locks on PostgreSQL (after schema.sql and queue.sql): LOCK, UNLOCK,
-- LOCKED. A lock's waiters listen on the channel of 'lock:' || name.

-- A lock whose TTL ran out, or whose holder's heartbeat is overdue, is
-- free.
CREATE FUNCTION ferry.lock_expire(lname text) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM ferry.locks l
    WHERE l.name = lname AND (l.until <= now() OR EXISTS (
        SELECT 1 FROM ferry.holders h WHERE h.holder = l.holder AND h.alive_until <= now()))
$$;

-- LOCK, one try: the grant's fencing token, or null if it is held.
CREATE FUNCTION ferry.lock(lname text, who text, ttl_ms bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    t bigint;
BEGIN
    PERFORM ferry.lock_expire(lname);
    INSERT INTO ferry.locks (name, holder, token, until)
    VALUES (lname, who, nextval('ferry.tokens'),
            CASE WHEN ttl_ms > 0 THEN now() + ferry.ms(ttl_ms) END)
    ON CONFLICT (name) DO NOTHING
    RETURNING token INTO t;
    RETURN t;
END $$;

-- Milliseconds until the lock may be free by time alone (its TTL, its
-- holder's heartbeat); null if it is free or nothing will free it.
CREATE FUNCTION ferry.lock_next_ms(lname text) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT greatest(0, ceil(extract(epoch FROM (least(l.until, h.alive_until) - now())) * 1000))::bigint
    FROM ferry.locks l LEFT JOIN ferry.holders h ON h.holder = l.holder
    WHERE l.name = lname
$$;

-- UNLOCK: 1 if `t` was the grant (from any client), else 0.
CREATE FUNCTION ferry.unlock(lname text, t bigint) RETURNS int
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM ferry.locks l WHERE l.name = lname AND l.token = t;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    PERFORM ferry.wake('lock:' || lname);
    RETURN 1;
END $$;

-- LOCKED: whether `t` is still the grant.
CREATE FUNCTION ferry.locked(lname text, t bigint) RETURNS int
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ferry.lock_expire(lname);
    RETURN CASE WHEN EXISTS (SELECT 1 FROM ferry.locks l WHERE l.name = lname AND l.token = t)
                THEN 1 ELSE 0 END;
END $$;

-- A holder's locks go with it (ferry.release calls this).
CREATE FUNCTION ferry.release_locks(who text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    lname text;
BEGIN
    FOR lname IN DELETE FROM ferry.locks l WHERE l.holder = who RETURNING l.name LOOP
        PERFORM ferry.wake('lock:' || lname);
    END LOOP;
END $$;

-- EVSET: the flag set, its waiters woken.
CREATE FUNCTION ferry.event_set(ename text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ferry.events AS e (name, is_set, generation) VALUES (ename, true, 1)
    ON CONFLICT (name) DO UPDATE
    SET generation = e.generation + CASE WHEN e.is_set THEN 0 ELSE 1 END, is_set = true;
    PERFORM ferry.wake('ev:' || ename);
END $$;

-- EVCLEAR: the flag cleared (an event never set and not waited for
-- leaves no row).
CREATE FUNCTION ferry.event_clear(ename text) RETURNS void
LANGUAGE sql AS $$
    UPDATE ferry.events SET is_set = false WHERE name = ename
$$;

-- EVISSET and EVWAIT's try: whether the flag is set, or was set since
-- `since` (the generation a waiter saw first; null: now), and the
-- generation now.
CREATE FUNCTION ferry.event_state(ename text, since bigint, OUT is_set boolean, OUT generation bigint)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(bool_or(e.is_set OR e.generation <> coalesce(since, e.generation)), false),
           coalesce(max(e.generation), 0)
    FROM ferry.events e WHERE e.name = ename
$$;

-- A wait's rows (one per name it waits on), alive for `ms`; replies
-- their ids. Rows past their time go here too.
CREATE FUNCTION ferry.wait_begin(wkind text, names text[], ms bigint) RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    DELETE FROM ferry.waiters w WHERE w.ctid IN (
        SELECT x.ctid FROM ferry.waiters x WHERE x.until < now() LIMIT 10
        FOR UPDATE SKIP LOCKED);
    WITH n AS (
        INSERT INTO ferry.waiters (kind, name, until)
        SELECT wkind, u, now() + ferry.ms(ms) FROM unnest(names) AS u
        RETURNING id
    )
    SELECT array_agg(n.id) INTO ids FROM n;
    RETURN ids;
END $$;

CREATE FUNCTION ferry.wait_renew(ids bigint[], ms bigint) RETURNS void
LANGUAGE sql AS $$
    UPDATE ferry.waiters SET until = now() + ferry.ms(ms) WHERE id = ANY (ids)
$$;

CREATE FUNCTION ferry.wait_end(ids bigint[]) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM ferry.waiters WHERE id = ANY (ids)
$$;

-- The live waiters of `wname` of kind `wkind`.
CREATE FUNCTION ferry.waiting(wkind text, wname text) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT count(*) FROM ferry.waiters w
    WHERE w.name = wname AND w.kind = wkind AND w.until > now()
$$;
