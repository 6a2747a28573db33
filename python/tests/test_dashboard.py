"""The dashboard at `/`, in a real headless Chromium (Debian's package,
driven by Playwright with its executable path) against a real broker."""

import os
import subprocess
import shutil
import urllib.error
import urllib.request

import pytest
import redis

import ferry
from conftest import serve

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("FERRY_TEST_URL")),
    reason="the dashboard is the broker's own HTTP port (docs/http-api.md); Redis has none",
)

sync_api = pytest.importorskip("playwright.sync_api")
Image = pytest.importorskip("PIL.Image")

#: The chart's colours (dashboard.html): put and ready.
PUT, READY = (0x2F, 0x6F, 0xDE), (0xD9, 0x82, 0x2B)


@pytest.fixture
def broker(tmp_path):
    with serve(tmp_path, "--durability", "memory") as running:
        yield running


@pytest.fixture
def browser():
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (scripts/test.sh installs it)"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(10_000)
    return page


def colour_pixels(png, box, colour, tolerance=40):
    """How many pixels of `box` (a Playwright bounding box) in the
    screenshot `png` are close to `colour`."""
    img = Image.open(png).convert("RGB")
    left, top = int(box["x"]), int(box["y"])
    region = img.crop((left, top, left + int(box["width"]), top + int(box["height"])))
    raw = region.tobytes()
    pixels = (raw[i:i + 3] for i in range(0, len(raw), 3))
    return sum(1 for p in pixels if all(abs(a - b) <= tolerance for a, b in zip(p, colour)))


def test_the_dashboard_follows_a_queue_and_redrives_its_dead_letters(broker, page, tmp_path):
    port, http = broker
    expect = sync_api.expect
    page.goto(http + "/")
    expect(page.locator("#no-queues")).to_be_visible()
    expect(page.locator("#version")).not_to_have_text("–")

    # A client makes a queue: it appears, with its depth.
    q = ferry.JoinableQueue(name="orders", url=f"ferry://127.0.0.1:{port}")
    for i in range(30):
        q.put(f"order {i}")
    row = page.locator('tr[data-queue="orders"]')
    expect(row.locator("td.ready")).to_have_text("30")
    expect(page.locator("#clients-list tr")).not_to_have_count(0)

    # A semaphore in use shows with its holders; gone once given back.
    expect(page.locator("#no-sync")).to_be_visible()
    sem = ferry.Semaphore(2, name="api", url=f"ferry://127.0.0.1:{port}")
    sem.acquire()
    used = page.locator('tr[data-sync="semaphore:api"]')
    expect(used.locator("td:nth-child(3)")).to_have_text("1")
    expect(used.locator("td:nth-child(5)")).to_have_text("1 of 2 free")
    sem.release()
    expect(page.locator("#no-sync")).to_be_visible()

    # The depth moves as the consumer works.
    for _ in range(12):
        q.get()
        q.task_done()
    expect(row.locator("td.ready")).to_have_text("18")

    # Five messages die: one attempt allowed, and each is given back once.
    r = redis.Redis(port=port)
    r.execute_command("QCONFIG", "orders", "MAXATTEMPTS", "1", "DEADLETTER", "orders.dead")
    got = r.execute_command("QGET", "orders", "COUNT", "5", "NOWAIT")
    for entry in got:
        r.execute_command("QNACK", "orders", entry[1])
    assert r.execute_command("QLEN", "orders.dead") == 5
    expect(page.locator('tr[data-queue="orders.dead"] td.ready')).to_have_text("5")

    # The queue's page shows its next messages and its dead letters, and
    # redrives them after a confirmation.
    page.locator('tr[data-queue="orders"] td.name a').click()
    expect(page.locator("#q-name")).to_have_text("orders")
    expect(page.locator("#q-next tr")).to_have_count(13)
    expect(page.locator("#dead-next tr")).to_have_count(5)
    page.locator("#redrive").click()
    expect(page.locator("#confirm")).to_be_visible()
    expect(page.locator("#confirm-text")).to_contain_text('from "orders.dead" back to "orders"')
    page.locator("#confirm-yes").click()
    expect(page.locator("#dead-none")).to_be_visible()
    expect(page.locator("#q-next tr")).to_have_count(18)
    assert r.execute_command("QLEN", "orders.dead") == 0
    assert r.execute_command("QLEN", "orders") == 18
    # Redriven messages start over: attempt 0, so they are not dead again
    # at their first return.
    assert page.locator("#q-next tr td:nth-child(2)").all_inner_texts().count("1") == 0

    # Back to the overview, with a little more traffic for the charts,
    # then a screenshot: the queue's name is on it, the charts are drawn.
    for i in range(40):
        q.put(f"more {i}")
    page.goto(http + "/#")
    expect(row.locator("td.ready")).to_have_text("58")
    expect(page.locator("#chart-depth polyline.series").first).to_be_attached()
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot))
    name = row.locator("td.name a")
    assert name.inner_text() == "orders"
    box = name.bounding_box()
    assert box and 0 <= box["y"] and box["y"] + box["height"] <= 1000, box
    depth_chart = page.locator("#chart-depth").bounding_box()
    assert colour_pixels(shot, depth_chart, READY) > 50, "the depth chart is empty"
    q.close()
    r.close()


def test_the_dashboard_wants_the_password_and_works_with_it(browser, tmp_path):
    with serve(tmp_path, "--durability", "memory", "--requirepass", "s3cret") as (port, http):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(http + "/", timeout=10)
        assert refused.value.code == 401
        # A browser asks once (HTTP Basic, any user name); the page's own
        # requests then carry it.
        page = browser.new_page(http_credentials={"username": "ops", "password": "s3cret"})
        page.set_default_timeout(10_000)
        assert page.goto(http + "/").status == 200
        r = redis.Redis(port=port, password="s3cret")
        r.execute_command("QPUT", "secured", "x")
        sync_api.expect(page.locator('tr[data-queue="secured"] td.ready')).to_have_text("1")
        sync_api.expect(page.locator("#error")).to_be_hidden()
        r.close()


def self_signed(tmp_path):
    """A certificate for 127.0.0.1 and its key (openssl), for --tls-cert."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True)
    return cert, key


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_the_dashboard_s_buttons_change_the_queue_over_http_and_https(browser, tmp_path, scheme):
    flags = ["--durability", "memory"]
    if scheme == "https":
        cert, key = self_signed(tmp_path)
        flags += ["--tls-cert", str(cert), "--tls-key", str(key)]
    with serve(tmp_path / "data", *flags) as (port, http):
        assert http.startswith(scheme + "://"), http
        r = redis.Redis(port=port, **({"ssl": True, "ssl_cert_reqs": "none"} if scheme == "https" else {}))
        for i in range(10):
            r.execute_command("QPUT", "orders", f"order {i}")
        r.execute_command("QCONFIG", "orders", "MAXATTEMPTS", "1", "DEADLETTER", "orders.dead")
        for entry in r.execute_command("QGET", "orders", "COUNT", "3", "NOWAIT"):
            r.execute_command("QNACK", "orders", entry[1])
        assert r.execute_command("QLEN", "orders.dead") == 3

        page = browser.new_page(ignore_https_errors=True)
        page.set_default_timeout(10_000)
        expect = sync_api.expect
        page.goto(http + "/#queue/orders")
        expect(page.locator("#q-name")).to_have_text("orders")

        def paused() -> int:
            return r.execute_command("QINFO", "orders")[b"paused"]

        page.locator("#q-pause").click()
        expect(page.locator("#q-pause")).to_have_text("Resume deliveries")
        assert paused() == 1
        page.locator("#q-pause").click()
        expect(page.locator("#q-pause")).to_have_text("Pause deliveries")
        assert paused() == 0

        page.locator("#redrive").click()
        page.locator("#confirm-yes").click()
        expect(page.locator("#dead-none")).to_be_visible()
        assert r.execute_command("QLEN", "orders") == 10

        page.locator("#q-purge").click()
        page.locator("#confirm-yes").click()
        expect(page.locator("#q-next-empty")).to_be_visible()
        assert r.execute_command("QLEN", "orders") == 0
        expect(page.locator("#error")).to_be_hidden()
        r.close()
