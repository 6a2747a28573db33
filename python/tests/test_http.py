"""The broker's HTTP admin port read by Prometheus's own parser."""

import os
import urllib.request

import pytest

import ferry
from conftest import serve

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("FERRY_TEST_URL")),
    reason="the HTTP admin port is the broker's own (docs/http-api.md); Redis has none",
)

parser = pytest.importorskip("prometheus_client.openmetrics.parser")


@pytest.fixture
def broker(tmp_path):
    with serve(tmp_path, "--durability", "sync") as (port, http):
        yield f"ferry://127.0.0.1:{port}", http


def scrape(http):
    with urllib.request.urlopen(http + "/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        text = r.read().decode()
    families = list(parser.text_string_to_metric_families(text))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), "a family named twice"
    return {(s.name, s.labels.get("queue") or s.labels.get("le")): s.value
            for f in families for s in f.samples}


def test_metrics_parse_and_follow_the_lesson_s_loop(broker):
    url, http = broker
    before = scrape(http)
    assert before[("ferry_queues", None)] == 0
    # prefetch=0: one delivery per get, so the counters are the loop's own
    # (by default a quick consumer leases a window ahead).
    q = ferry.JoinableQueue(name="lesson", url=url, prefetch=0)
    for i in range(50):
        q.put(i)
    for _ in range(20):
        q.get()
        q.task_done()
    after = scrape(http)
    assert after[("ferry_queue_puts_total", "lesson")] == 50
    assert after[("ferry_queue_dones_total", "lesson")] == 20
    assert after[("ferry_queue_unfinished_messages", "lesson")] == 30
    assert after[("ferry_queue_ready_messages", "lesson")] == 30
    assert after[("ferry_connected_clients", None)] >= 1
    # The lesson's loop in a queue's counters: one delivery each, none again.
    assert after[("ferry_queue_deliveries_total", "lesson")] == 20
    assert after[("ferry_queue_redeliveries_total", "lesson")] == 0
    assert after[("ferry_queue_oldest_message_age_seconds", "lesson")] >= 0
    # The log's histograms (the parser checks their buckets are cumulative
    # and end at +Inf): every fsync timed, every record in one write.
    fsyncs = after[("ferry_log_fsyncs_total", None)]
    assert fsyncs > 0
    assert after[("ferry_log_fsync_seconds_count", None)] == fsyncs
    assert after[("ferry_log_fsync_seconds_bucket", "+Inf")] == fsyncs
    assert after[("ferry_log_write_batch_records_sum", None)] == after[("ferry_log_records_total", None)]
