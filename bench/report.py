#!/usr/bin/env python3
"""Turns bench/run.sh's measurements into BENCHMARKS.md and PNG charts.

Every number in the report comes from the results file; nothing is typed
by hand. Ratios read the same way everywhere: above 1.0, ferry is better
(faster, lower latency, less memory) than that peer at equal durability.

    python bench/report.py --results R.jsonl --versions V.json \\
        --md BENCHMARKS.md --charts bench/charts --command "bench/run.sh"
"""

import argparse
import collections
import datetime
import json
import os
import textwrap

HIGHER_IS_BETTER = {"msg/s"}
CLASSES = ("memory", "async", "sync")
PEER_ORDER = ["ferry-unix", "ferry-noack", "redis-list", "redis-stream", "beanstalkd", "nats-memory", "nats-file", "multiprocessing"]


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def split(label):
    target, _, cls = label.rpartition(" ")
    return target, cls


def reference(cells, peer):
    """The ferry row a peer is compared with: NOACK gets for Redis lists
    (neither acknowledges), else ferry's acknowledged gets."""
    if peer == "redis-list" and "ferry-noack" in cells:
        return cells["ferry-noack"]
    return cells.get("ferry")


def ratio(ferry, peer, unit):
    if ferry is None or peer is None or not ferry or not peer:
        return None
    return ferry / peer if unit in HIGHER_IS_BETTER else peer / ferry


def fmt_value(v, unit):
    if v is None:
        return "did not finish"
    if unit == "msg/s":
        return f"{v:,.0f}"
    if unit == "us":
        return f"{v:,.0f} µs"
    return f"{v:,.1f} {unit.split('/')[0]}"


def fmt_ratio(r, failed=False):
    if failed:
        return "peer did not finish"
    if r is None:
        return "–"
    return f"**{r:.2f}**" if r < 1 else f"{r:.2f}"


def tables(rows):
    """{class: {workload: {target: (value, unit)}}}, in first-seen order.
    A run that failed has the value None and its reason as the unit."""
    by = collections.OrderedDict((c, collections.OrderedDict()) for c in CLASSES)
    for r in rows:
        target, cls = split(r["label"])
        by.setdefault(cls, collections.OrderedDict())
        cell = (r["value"], r["unit"]) if r["value"] is not None else (None, "failed: " + r.get("failed", ""))
        by[cls].setdefault(r["workload"], {})[target] = cell
    return by


def peers_of(workloads):
    seen = {t for w in workloads.values() for t in w if t != "ferry"}
    return [p for p in PEER_ORDER if p in seen] + sorted(seen - set(PEER_ORDER))


def chart(path, title, groups, series, values, ylabel, log=False):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(groups) + 2), 4))
    width = 0.8 / max(1, len(series))
    for i, s in enumerate(series):
        xs = [g + i * width for g in range(len(groups))]
        ys = [values.get((grp, s), 0) for grp in groups]
        ax.bar(xs, ys, width, label=s)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
    ax.set_xticklabels([textwrap.fill(g, 16) for g in groups], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def goals(by):
    out = []
    losses = []
    for cls, workloads in by.items():
        for w, cells in workloads.items():
            if "ferry" not in cells:
                continue
            unit = cells["ferry"][1]
            if unit != "msg/s":
                continue
            for p, (pv, _) in cells.items():
                # A ceiling (asyncio.Queue in one process) is what the
                # language can do at all, not a peer to beat.
                if p.startswith("ferry") or p.endswith("-ceiling") or pv is None:
                    continue
                r = ratio(reference(cells, p)[0], pv, unit)
                if r is not None and r < 1:
                    losses.append(f"{w} vs {p} ({cls}): {r:.2f}")
    out.append(
        "- ferry ahead of every peer on every throughput row at equal durability: "
        + ("**met**" if not losses else f"**not met** on {len(losses)} rows — " + "; ".join(losses))
    )
    for w, cells in by.get("async", {}).items():
        if w.startswith("4p4c") and "ferry" in cells and "redis-stream" in cells:
            r = ratio(cells["ferry"][0], cells["redis-stream"][0], "msg/s")
            if r is not None:
                out.append(f"- {w}, acknowledged, at least 3× Redis streams (async): {r:.2f}× — "
                           + ("**met**" if r >= 3 else "**not met**"))
    mem = by.get("memory", {})
    lat = next((c for w, c in mem.items() if w.endswith(" p99")), None)
    if lat and "ferry" in lat and "redis-list" in lat:
        f, r = reference(lat, "redis-list")[0], lat["redis-list"][0]
        out.append(f"- p99 latency no worse than Redis's (list, each with gets that need no acknowledgement): "
                   f"ferry {f:,.0f} µs, Redis {r:,.0f} µs — " + ("**met**" if f <= r else "**not met**"))
    if lat and "ferry" in lat and "redis-stream" in lat:
        f, r = lat["ferry"][0], lat["redis-stream"][0]
        out.append(f"- p99 latency with acknowledgements, against Redis streams: "
                   f"ferry {f:,.0f} µs, Redis {r:,.0f} µs — " + ("**met**" if f <= r else "**not met**"))
    q = mem.get("memory per queued message")
    if q and "ferry" in q:
        f = q["ferry"][0]
        s = q.get("redis-stream", (None,))[0]
        li = q.get("redis-list", (None,))[0]
        if s:
            out.append(f"- memory per queued message no more than a Redis stream's: ferry {f:.1f} B, stream {s:.1f} B — "
                       + ("**met**" if f <= s else "**not met**"))
        if li:
            out.append(f"- (stretch) no more than a Redis list's: list {li:.1f} B — "
                       + ("**met**" if f <= li else "**not met**"))
    # Issue 27's: the Pool and the executor against the standard library's.
    for w, c in mem.items():
        if w.startswith("python: Pool(4).map") and "ferry" in c and "multiprocessing" in c:
            r = ratio(c["ferry"][0], c["multiprocessing"][0], "msg/s")
            if r is not None:
                out.append(f"- {w} (trivial f, default chunksize) at least 0.5× multiprocessing.Pool(4): "
                           f"{r:.2f}× — " + ("**met**" if r >= 0.5 else "**not met**"))
        if w.startswith("python: ProcessPoolExecutor round trip") and "ferry" in c and "concurrent.futures" in c:
            f, r = c["ferry"][0], c["concurrent.futures"][0]
            out.append(f"- ProcessPoolExecutor submit→result p50 within 2× of concurrent.futures': ferry {f:.3f} ms, "
                       f"stdlib {r:.3f} ms ({f / r:.2f}×) — " + ("**met**" if f <= 2 * r else "**not met**"))
    for kind in ("idle", "blocked"):
        c = mem.get(f"memory per connection {kind}")
        if c and "ferry" in c and "redis-list" in c:
            f, r = c["ferry"][0], c["redis-list"][0]
            out.append(f"- per-connection memory ({kind}) no more than Redis's: ferry {f:,.0f} B, Redis {r:,.0f} B — "
                       + ("**met**" if f <= r else "**not met**"))
    return out


BACKENDS = ["ferry-redis", "ferry-redis-cluster"]


def backend_goal(by):
    cells = by.get("memory", {}).get("throughput B=100", {})
    f, r = cells.get("ferry-redis", (None,))[0], cells.get("redis-stream", (None,))[0]
    if f is None or r is None:
        return []
    return [f"- on a single Redis, ferry's client (its Lua functions) at B=100 at least raw Redis streams "
            f"with acks: ferry {f:,.0f} msg/s, streams {r:,.0f} msg/s ({f / r:.2f}×) — "
            + ("**met**" if f >= r else "**not met**")]


def backends(by, versions):
    """ferry's client on Redis (redis://) and on a Redis Cluster
    (redis+cluster://) against raw Redis streams on one redis-server."""
    workloads = by.get("memory", {})
    rows = [(w, c) for w, c in workloads.items() if any(t in c for t in BACKENDS)]
    if not rows:
        return []
    md = ["## ferry's client on Redis and Redis Cluster / raw Redis streams", "",
          "The same workloads through ferry's client on a redis-server (`ferry-redis`) and on a Redis "
          "Cluster of 3 primaries and 3 replicas (`ferry-redis-cluster`, scripts/redis-cluster.sh), "
          "without persistence, against Redis streams (XADD / XREADGROUP / XACK) on one redis-server. "
          f"The cluster's 6 servers, the streams' one and the load generator share the machine's "
          f"{versions['cores']} cores: the cluster row measures the protocol's cost here, not what "
          "3 primaries on their own machines would do.", "",
          "| workload | " + " | ".join(BACKENDS) + " | redis-stream | ratios (ferry-redis, ferry-redis-cluster / streams) |",
          "|---|" + "---|" * (len(BACKENDS) + 2)]
    for w, c in rows:
        vals = [fmt_value(*c[t]) if t in c else "–" for t in BACKENDS + ["redis-stream"]]
        ref = c.get("redis-stream", (None,))[0]
        ratios = [fmt_ratio(c[t][0] / ref) if t in c and c[t][0] and ref else "–" for t in BACKENDS]
        md.append(f"| {w} | " + " | ".join(vals) + " | " + ", ".join(ratios) + " |")
    md.append("")
    return md


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--versions", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--charts", required=True)
    ap.add_argument("--command", default="bench/run.sh")
    args = ap.parse_args()
    rows = load(args.results)
    versions = json.load(open(args.versions))
    by = tables(rows)
    os.makedirs(args.charts, exist_ok=True)
    rel = os.path.relpath(args.charts, os.path.dirname(os.path.abspath(args.md)) or ".")

    md = ["# Benchmarks", ""]
    md.append(f"Generated by `{args.command}` on {datetime.date.today().isoformat()}; "
              "every number below was measured by that run (results in "
              f"`{os.path.join(rel, 'results.jsonl')}`). Ratios are ferry against the peer at equal durability: "
              "**above 1.0 ferry is better** (more messages a second, lower latency, less memory); "
              "below 1.0 is in bold.")
    md.append("")
    md.append(f"Machine: {versions['cores']} cores ({versions['cpu']}), {versions['memory']} RAM, "
              f"Linux {versions['kernel']}; shared and noisy, so compare ratios, not absolute figures.")
    md.append("")
    md.append(f"Versions: {versions['ferry']}; {versions['redis']}; {versions['beanstalkd']}; "
              f"nats-server {versions['nats']}; Python {versions['python']}.")
    md.append("")
    md.append("The workload (crates/ferry-loadgen): producers put 16-byte messages, consumers get and "
              "acknowledge them, the clock stops when every message is acknowledged. B is the batch: "
              "QPUTMANY / QGET COUNT / QDONE with many ids for ferry, LPUSH with many values / BLMPOP "
              "for Redis lists, pipelined XADD / XREADGROUP COUNT / XACK for streams, pipelined put / "
              "reserve / delete for beanstalkd, async publishes / fetch / acks for NATS. "
              "2 producers and 2 consumers unless the row says otherwise. Redis lists acknowledge nothing, so "
              "they are compared with ferry's NOACK gets (`ferry-noack`, the same contract); every other "
              "peer with ferry's acknowledged gets. The ferry-unix (Unix socket) and ferry-noack "
              "columns of the measured values are ferry's own variants.")
    md.append("")

    md.append("## Goals")
    md.append("")
    md.extend(goals(by))
    md.extend(backend_goal(by))
    md.append("")
    md.extend(backends(by, versions))

    for cls, workloads in by.items():
        if not workloads:
            continue
        peers = peers_of(workloads)
        # ferry's own variants are measured values, not peers to beat.
        rivals = [p for p in peers if not p.startswith("ferry") and not p.endswith("-ceiling")]
        md.append(f"## {cls} durability: ferry / peer")
        md.append("")
        md.append("| workload | " + " | ".join(rivals) + " |")
        md.append("|---|" + "---|" * len(rivals))
        for w, cells in workloads.items():
            if "ferry" not in cells:
                continue
            unit = cells["ferry"][1]
            md.append(f"| {w} | " + " | ".join(
                fmt_ratio(ratio(reference(cells, p)[0], cells[p][0], unit), failed=cells[p][0] is None)
                if p in cells else "–"
                for p in rivals) + " |")
        md.append("")
        md.append("<details><summary>measured values</summary>")
        md.append("")
        md.append("| workload | ferry | " + " | ".join(peers) + " |")
        md.append("|---|---|" + "---|" * len(peers))
        for w, cells in workloads.items():
            vals = [fmt_value(*cells[t]) if t in cells else "–" for t in ["ferry"] + peers]
            md.append(f"| {w} | " + " | ".join(vals) + " |")
        md.append("")
        md.append("</details>")
        md.append("")

        tp = [w for w, c in workloads.items() if any(u == "msg/s" for _, u in c.values())]
        for group, name, title in (
            ([w for w in tp if not w.startswith("python:")], f"throughput-{cls}.png",
             f"Throughput, {cls} durability (msg/s, log scale)"),
            ([w for w in tp if w.startswith("python:")], "python.png",
             "Python: ferry against multiprocessing, redis.asyncio and asyncio.Queue (items/s, log scale)"),
        ):
            if not group:
                continue
            series = ["ferry"] + [p for p in peers if any(p in workloads[w] for w in group)]
            values = {(w, s): workloads[w][s][0] for w in group for s in series
                      if s in workloads[w] and workloads[w][s][0] is not None}
            chart(os.path.join(args.charts, name), title, group, series, values, "messages / s", log=True)
            md.append(f"![{title}]({os.path.join(rel, name)})")
            md.append("")
        if cls == "memory":
            lat = [w for w in workloads if workloads[w] and next(iter(workloads[w].values()))[1] == "us"]
            mem = [w for w in workloads if workloads[w] and next(iter(workloads[w].values()))[1].startswith("B/")]
            for group, title, name, ylabel in ((lat, "Put → get latency (µs, log scale)", "latency.png", "µs"),
                                               (mem, "Server memory (bytes, log scale)", "memory.png", "bytes")):
                if not group:
                    continue
                series = ["ferry"] + [p for p in peers if any(p in workloads[w] for w in group)]
                values = {(w, s): workloads[w][s][0] for w in group for s in series
                          if s in workloads[w] and workloads[w][s][0] is not None}
                chart(os.path.join(args.charts, name), title, group, series, values, ylabel, log=True)
                md.append(f"![{title}]({os.path.join(rel, name)})")
                md.append("")

    with open(args.md, "w") as f:
        f.write("\n".join(md) + "\n")
    print(f"wrote {args.md} and charts in {args.charts}")


if __name__ == "__main__":
    main()
