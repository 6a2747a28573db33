"""ferry's security from Python: ferrys:// (blocking and asyncio classes)
against a broker serving TLS, with certificates openssl makes for the
test; and a user's credentials from the URL against an --acl-file."""

import asyncio
import os
import subprocess

import pytest
import redis

import ferry
import ferry.aio
from conftest import BINARY, serve

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("FERRY_TEST_URL")),
    reason="TLS (--tls-cert) and users (--acl-file) are ferry's broker's; this suite runs on another engine",
)


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_broker(tmp_path):
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=ferry test CA", cwd=tmp_path)
    openssl("req", *ec, "-keyout", "broker.key", "-out", "broker.csr",
            "-subj", "/CN=127.0.0.1", cwd=tmp_path)
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "broker.pem", "-days", "1", "-extfile", "san.ext",
            cwd=tmp_path)
    with serve(tmp_path / "data", "--durability", "memory",
               "--tls-cert", str(tmp_path / "broker.pem"), "--tls-key", str(tmp_path / "broker.key"),
               http=False) as (port, _):
        yield f"ferrys://127.0.0.1:{port}?ca={tmp_path / 'ca.pem'}", port


def test_the_lesson_s_queue_over_tls(tls_broker):
    url, port = tls_broker
    q = ferry.JoinableQueue(name="tls", url=url)
    for i in range(10):
        q.put(i)
    assert [q.get() for _ in range(10)] == list(range(10))
    for _ in range(10):
        q.task_done()
    q.join()
    lock = ferry.Lock(name="tls-lock", url=url)
    with lock:
        pass
    # Without the CA, the broker's certificate is not trusted.
    with pytest.raises(Exception, match="(?i)certificate"):
        ferry.Queue(name="tls", url=f"ferrys://127.0.0.1:{port}").put(1)


def test_asyncio_over_tls(tls_broker):
    url, _ = tls_broker

    async def main():
        q = ferry.aio.JoinableQueue(name="tls-aio", url=url)
        await q.put("a")
        assert await q.get() == "a"
        q.task_done()
        await q.join()
        await q.aclose()

    asyncio.run(main())


def test_a_user_from_the_url_gets_its_rights(tmp_path):
    hashed = subprocess.run([BINARY, "hash-password"], input="worker-pw\n", text=True,
                            capture_output=True, check=True).stdout.strip()
    acl = tmp_path / "acl.toml"
    acl.write_text(f'[users.worker]\npassword_hash = "{hashed}"\nput = ["jobs.*"]\nget = ["jobs.*"]\n')
    with serve(tmp_path / "data", "--durability", "memory", "--acl-file", str(acl),
               http=False) as (port, _):
        url = f"ferry://worker:worker-pw@127.0.0.1:{port}"
        q = ferry.JoinableQueue(name="jobs.py", url=url)
        q.put("x")
        assert q.get() == "x"
        q.task_done()
        with pytest.raises(ferry.PermissionDenied, match="NOPERM"):
            ferry.Queue(name="billing", url=url).put("no")
        with pytest.raises(ferry.AuthenticationError, match="WRONGPASS"):
            ferry.Queue(name="jobs.py", url=f"ferry://worker:wrong@127.0.0.1:{port}")
        with pytest.raises(ferry.AuthenticationError, match="NOAUTH"):
            ferry.Queue(name="jobs.py", url=f"ferry://127.0.0.1:{port}")


def test_a_user_without_admin_makes_private_queues(tmp_path):
    # A user without admin may make a private queue with an idle expiry
    # (it then expires only while empty: a shared name made so never
    # vanishes with others' messages), but not choose where its messages go.
    hashed = subprocess.run([BINARY, "hash-password"], input="worker-pw\n", text=True,
                            capture_output=True, check=True).stdout.strip()
    acl = tmp_path / "acl.toml"
    acl.write_text(f'[users.worker]\npassword_hash = "{hashed}"\nput = ["*"]\nget = ["*"]\n')
    with serve(tmp_path / "data", "--durability", "memory", "--acl-file", str(acl),
               http=False) as (port, _):
        url = f"ferry://worker:worker-pw@127.0.0.1:{port}"
        q = ferry.JoinableQueue(url=url)
        q.put("private")
        assert q.get() == "private"
        q.task_done()
        q.join()
        r = redis.Redis(port=port, username="worker", password="worker-pw")
        assert r.execute_command("QINFO", q._name)[b"expire"] == ferry.PRIVATE_EXPIRE_MS
        with pytest.raises(redis.exceptions.ResponseError, match="no 'admin' right"):
            r.execute_command("QCREATE", "shared", "LEASE", "1")
        r.close()
