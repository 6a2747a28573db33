"""A put inside the caller's own PostgreSQL transaction — `q.put(item,
using=conn)` — on a server started here (scripts/postgres.sh: initdb as a
non-root user, a loopback port), through psycopg 3 and psycopg2: the item
is seen if and when the transaction commits, never after a rollback or a
crash before the commit, and a consumer waiting for it is woken by the
commit. The order-and-job example of docs/backends.md."""

import multiprocessing
import os
import pathlib
import queue
import shutil
import subprocess
import tempfile
import threading

import pytest

import ferry

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("FERRY_TEST_URL")),
    reason="starts a PostgreSQL server of its own; once is enough",
)

psycopg = pytest.importorskip("psycopg")
psycopg2 = pytest.importorskip("psycopg2")

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "postgres.sh"


@pytest.fixture(scope="module")
def pg():
    """The URL of a PostgreSQL server of this module's own (in a directory
    the server's user can reach: pytest's are private to root)."""
    d = tempfile.mkdtemp(prefix="ferry-pg-")
    out = subprocess.run(["bash", str(SCRIPT), "start", str(d)], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        pytest.fail(f"scripts/postgres.sh start: {out.stderr}")
    url = out.stdout.strip()
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text)")
    yield url
    subprocess.run(["bash", str(SCRIPT), "stop", str(d)], timeout=120)
    shutil.rmtree(d, ignore_errors=True)


def new_queue(pg, **kw):
    return ferry.JoinableQueue(name=f"tx-{os.urandom(4).hex()}", url=pg, **kw)


def test_a_put_is_seen_when_its_transaction_commits(pg):
    q = new_queue(pg)
    with psycopg.connect(pg) as db:
        db.execute("INSERT INTO orders (item) VALUES ('book')")
        q.put({"order": "book"}, using=db)
        assert q.qsize() == 0, "not before the commit"
        with pytest.raises(queue.Empty):
            q.get_nowait()
        db.commit()
    assert q.get(timeout=30) == {"order": "book"}
    q.task_done()
    q.join()


def test_a_rolled_back_put_never_happened(pg):
    q = new_queue(pg)
    with psycopg.connect(pg) as db:
        db.execute("INSERT INTO orders (item) VALUES ('lamp')")
        q.put_many(["a", "b"], using=db)
        db.rollback()
    with pytest.raises(queue.Empty):
        q.get_nowait()
    q.join()  # nothing unfinished: the rolled-back items never counted
    with psycopg.connect(pg) as db:
        assert db.execute("SELECT count(*) FROM orders WHERE item = 'lamp'").fetchone() == (0,)


def test_psycopg2_too(pg):
    q = new_queue(pg)
    db = psycopg2.connect(pg)
    try:
        with db.cursor() as cur:
            cur.execute("INSERT INTO orders (item) VALUES ('pen')")
        q.put_many(["x", "y"], using=db)
        assert q.qsize() == 0
        db.commit()
    finally:
        db.close()
    assert [q.get(timeout=30), q.get(timeout=30)] == ["x", "y"]


def test_a_waiting_consumer_is_woken_by_the_commit(pg):
    q = new_queue(pg)
    got = []
    consumer = threading.Thread(target=lambda: got.append(q.get(timeout=60)))
    with psycopg.connect(pg) as db:
        consumer.start()
        q.put("job", using=db)
        db.commit()
    consumer.join(90)
    assert got == ["job"]


def _crash_inside_a_transaction(url, name, ready):
    import os
    import signal

    db = psycopg.connect(url)
    db.execute("INSERT INTO orders (item) VALUES ('crash')")
    ferry.JoinableQueue(name=name, url=url).put("lost", using=db)
    ready.set()
    os.kill(os.getpid(), signal.SIGSTOP)  # the parent kills it here


def test_a_crash_before_the_commit_leaves_nothing(pg):
    q = new_queue(pg)
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_crash_inside_a_transaction, args=(pg, q.name, ready))
    p.start()
    assert ready.wait(60)
    p.kill()
    p.join(60)
    # The server ends the dead client's transaction when it sees its
    # connection go; until then the item is not seen either.
    with psycopg.connect(pg, autocommit=True) as db:
        for _ in range(3000):
            if db.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'").fetchone() == (0,):
                break
            threading.Event().wait(0.01)
        assert db.execute("SELECT count(*) FROM orders WHERE item = 'crash'").fetchone() == (0,)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    q.join()


def test_a_full_queue_refuses_at_once(pg):
    q = ferry.Queue(1, name=f"tx-{os.urandom(4).hex()}", url=pg)
    q.put("first")
    with psycopg.connect(pg) as db:
        with pytest.raises(queue.Full):
            q.put("second", using=db)
        db.rollback()
    with pytest.raises(ValueError, match="postgres://"):
        ferry.Queue().put("x", using=object())
