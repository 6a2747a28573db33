"""The crawler, in the shape the GIL lesson ends with: many processes, each
running many coroutines, sharing one queue of URLs.

The example starts a small asyncio HTTP server of its own (a site of
linked pages, each answered after a few milliseconds, as a real server
would be), then 3 processes x 20 coroutines crawl it from /page/0: fetch
a page, put the links it holds (each URL once, whichever process finds it
first: the broker's DEDUP is the shared "seen" set), task_done(). The main
process waits with join() — the blocking ferry class on the same queue —
and checks every page was crawled exactly once.

    FERRY_URL=ferry://127.0.0.1:7878 python examples/python/crawler.py
"""

import asyncio
import multiprocessing as mp
import re
import threading

import ferry
import ferry.aio

PAGES = 300
PROCESSES = 3
COROUTINES = 20
LINK = re.compile(rb'href="(/page/\d+)"')


# The site: page i links to i+1 and to two pages further on.

async def serve_page(reader, writer):
    request = await reader.readline()
    while (await reader.readline()) not in (b"\r\n", b""):
        pass  # the headers
    path = request.split()[1].decode() if len(request.split()) > 1 else "/"
    m = re.fullmatch(r"/page/(\d+)", path)
    await asyncio.sleep(0.005)  # the network and the server's work
    if m and int(m[1]) < PAGES:
        i = int(m[1])
        links = {(i + 1) % PAGES, (i * 7 + 3) % PAGES, (i * 13 + 5) % PAGES}
        body = f"<h1>page {i}</h1>" + "".join(f'<a href="/page/{j}">{j}</a> ' for j in sorted(links))
        status = "200 OK"
    else:
        body, status = "not found", "404 Not Found"
    data = body.encode()
    writer.write(f"HTTP/1.0 {status}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    await writer.drain()
    writer.close()


def start_site() -> int:
    """Runs the site on a thread of its own; replies its port."""
    ready = threading.Event()
    port = []

    async def run():
        server = await asyncio.start_server(serve_page, "127.0.0.1", 0)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        async with server:
            await server.serve_forever()

    threading.Thread(target=asyncio.run, args=(run(),), daemon=True).start()
    ready.wait(10)
    return port[0]


async def fetch(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    return response.split(b"\r\n\r\n", 1)[1]


# A crawler process: COROUTINES coroutines on one queue.

def crawl(port: int, urls, crawled) -> None:
    async def worker():
        while True:
            path = await urls.get()      # leased: back to the queue if this process dies
            if path is None:
                urls.task_done()
                return
            body = await fetch(port, path)
            for link in LINK.findall(body):
                await urls.put(link.decode(), dedup=link)
            await crawled.put(path)
            urls.task_done()

    async def main():
        await asyncio.gather(*(worker() for _ in range(COROUTINES)))

    asyncio.run(main())


if __name__ == "__main__":
    port = start_site()
    # ferry.aio handles pickle by name, like the blocking ones: the
    # processes share these queues.
    urls, crawled = ferry.aio.JoinableQueue(), ferry.aio.Queue()
    crawlers = [mp.Process(target=crawl, args=(port, urls, crawled)) for _ in range(PROCESSES)]
    for p in crawlers:
        p.start()
    asyncio.run(urls.put("/page/0", dedup="/page/0"))
    # The blocking class on the same queue: join() returns once every URL
    # put was crawled and task_done(), whichever process did it.
    ferry.JoinableQueue(name=urls.name).join()
    for _ in range(PROCESSES * COROUTINES):
        urls.put_nowait(None)
    for p in crawlers:
        p.join()
        assert p.exitcode == 0, p.exitcode
    pages = []
    while True:
        try:
            pages.append(crawled.get_nowait())
        except asyncio.QueueEmpty:
            break
    print(f"{PROCESSES} processes x {COROUTINES} coroutines crawled {len(pages)} pages, "
          f"{len(set(pages))} distinct")
    assert sorted(pages) == sorted(f"/page/{i}" for i in range(PAGES)), "every page exactly once"
