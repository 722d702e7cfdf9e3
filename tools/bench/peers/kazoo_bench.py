#!/usr/bin/env python3
"""Benchmark peer: kazoo recipes against a ZooKeeper ensemble, doing the same work as
CuratorBench.java so both can be compared with Paddock.  Needs `pip install kazoo`.

    python3 kazoo_bench.py CONNECT_STRING MODE ARGS...

    lock-cycle CLIENTS OPS_PER_CLIENT  each client cycles acquire+release of a kazoo Lock on its
                                       own /bench/kazoo/lock-<i> (20 unmeasured warm-up cycles
                                       first); latency per cycle
    handoff CONTENDERS ROUNDS          all clients contend on /bench/kazoo/handoff; ROUNDS
                                       acquisitions in total; latency from a release to the next
                                       holder's acquire
    queue-put ITEMS BATCH              one producer puts ITEMS 16-byte items into a LockingQueue at
                                       /bench/kazoo/queue: put() if BATCH=1 (latency per put), else
                                       put_all() of BATCH items
    queue-take ITEMS CONSUMERS         ITEMS items are enqueued untimed (put_all of 100), then
                                       CONSUMERS clients drain them with get() + consume(); timed
                                       until ITEMS were consumed
    queue-take-plain ITEMS CONSUMERS   the same with kazoo's plain Queue at /bench/kazoo/plain:
                                       get() takes and deletes an item in one step (at most once)

Every client is its own KazooClient on its own thread. The mode's paths are deleted before each
run. Prints one JSON line to stdout:
    {"peer":"kazoo","mode":...,"ops":N,"seconds":S,"rate":N/S,"median_us":M|null,"p99_us":P|null}
"""
import json
import logging
import math
import os
import sys
import threading
import time
import traceback

from kazoo.client import KazooClient
from kazoo.recipe.queue import LockingQueue, Queue

ROOT = "/bench/kazoo"
QUEUE = ROOT + "/queue"
PAYLOAD = b"0123456789abcdef"  # 16 bytes
WARMUP = 20
FILL_BATCH = 100
now = time.perf_counter


def connect(hosts):
    client = KazooClient(hosts=hosts)
    client.start(timeout=30)
    return client


def wipe(hosts, *paths):
    client = connect(hosts)
    for path in paths:
        if client.exists(path):
            client.delete(path, recursive=True)
    client.stop()
    client.close()


def run_clients(hosts, n, worker):
    """Run worker(i, client, go) on n threads, each with its own connected client; the worker
    calls go.wait() when set up. Returns now() at the moment all workers passed go, after all
    workers finished. Any worker failure aborts the process."""
    go = threading.Barrier(n + 1)

    def body(i):
        try:
            client = connect(hosts)
            worker(i, client, go)
            client.stop()
            client.close()
        except BaseException:
            traceback.print_exc()
            os._exit(1)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    go.wait()
    t0 = now()
    for t in threads:
        t.join()
    return t0


def lock_cycle(hosts, clients, ops):
    paths = ["%s/lock-%d" % (ROOT, i) for i in range(clients)]
    wipe(hosts, *paths)
    lat = [0.0] * (clients * ops)

    def worker(i, client, go):
        lock = client.Lock(paths[i])
        for _ in range(WARMUP):
            lock.acquire()
            lock.release()
        go.wait()
        for k in range(ops):
            t = now()
            lock.acquire()
            lock.release()
            lat[i * ops + k] = now() - t

    t0 = run_clients(hosts, clients, worker)
    report("lock-cycle", clients * ops, now() - t0, lat)


def handoff(hosts, contenders, rounds):
    path = ROOT + "/handoff"
    wipe(hosts, path)
    mu = threading.Lock()
    state = {"acquisitions": 0, "released_at": 0.0, "end_at": 0.0}
    lat = [0.0] * max(rounds - 1, 0)

    def worker(i, client, go):
        lock = client.Lock(path)
        go.wait()
        while True:
            lock.acquire()
            t = now()
            with mu:
                state["acquisitions"] += 1
                n = state["acquisitions"]
            if n > rounds:  # done: just pass the lock on
                lock.release()
                return
            if n > 1:
                lat[n - 2] = t - state["released_at"]
            if n == rounds:
                state["end_at"] = t
            state["released_at"] = now()
            lock.release()

    t0 = run_clients(hosts, contenders, worker)
    report("handoff", rounds, state["end_at"] - t0, lat)


def queue_put(hosts, items, batch):
    wipe(hosts, QUEUE)
    client = connect(hosts)
    queue = LockingQueue(client, QUEUE)
    queue._ensure_paths()  # create the queue's nodes untimed, like Curator's queue.start()
    lat = [] if batch == 1 else None
    t0 = now()
    done = 0
    while done < items:
        n = min(batch, items - done)
        t = now()
        if batch == 1:
            queue.put(PAYLOAD)
        else:
            queue.put_all([PAYLOAD] * n)
        if lat is not None:
            lat.append(now() - t)
        done += n
    report("queue-put", items, now() - t0, lat)
    client.stop()
    client.close()


def queue_take(hosts, items, consumers):
    wipe(hosts, QUEUE)
    client = connect(hosts)
    filler = LockingQueue(client, QUEUE)
    for done in range(0, items, FILL_BATCH):
        filler.put_all([PAYLOAD] * min(FILL_BATCH, items - done))
    client.stop()
    client.close()

    mu = threading.Lock()
    state = {"consumed": 0, "end_at": 0.0}
    all_consumed = threading.Event()

    def worker(i, client, go):
        queue = LockingQueue(client, QUEUE)
        go.wait()
        while not all_consumed.is_set():
            if queue.get(timeout=0.2) is None:
                continue
            queue.consume()
            with mu:
                state["consumed"] += 1
                if state["consumed"] == items:
                    state["end_at"] = now()
                    all_consumed.set()

    t0 = run_clients(hosts, consumers, worker)
    report("queue-take", items, state["end_at"] - t0, None)


def queue_take_plain(hosts, items, consumers):
    path = ROOT + "/plain"
    wipe(hosts, path)
    client = connect(hosts)
    Queue(client, path)._ensure_paths()
    for done in range(0, items, FILL_BATCH):  # Queue has no put_all: its put()'s nodes, 100 a transaction
        tx = client.transaction()
        for _ in range(min(FILL_BATCH, items - done)):
            tx.create(path + "/entry-100-", PAYLOAD, sequence=True)
        tx.commit()
    client.stop()
    client.close()

    mu = threading.Lock()
    state = {"consumed": 0, "end_at": 0.0}
    all_consumed = threading.Event()

    def worker(i, client, go):
        queue = Queue(client, path)
        go.wait()
        while not all_consumed.is_set():
            if queue.get() is None:
                time.sleep(0.01)
                continue
            with mu:
                state["consumed"] += 1
                if state["consumed"] == items:
                    state["end_at"] = now()
                    all_consumed.set()

    t0 = run_clients(hosts, consumers, worker)
    report("queue-take-plain", items, state["end_at"] - t0, None)


def percentile_us(sorted_secs, q):
    """Nearest-rank percentile of sorted samples in seconds, in microseconds."""
    idx = max(0, math.ceil(q * len(sorted_secs)) - 1)
    return round(sorted_secs[idx] * 1e6, 1)


def report(mode, ops, seconds, lat):
    median = p99 = None
    if lat:
        lat = sorted(lat)
        median, p99 = percentile_us(lat, 0.50), percentile_us(lat, 0.99)
    print(json.dumps({"peer": "kazoo", "mode": mode, "ops": ops, "seconds": round(seconds, 6),
                      "rate": round(ops / seconds, 1), "median_us": median, "p99_us": p99}, separators=(",", ":")),
          flush=True)


MODES = {"lock-cycle": lock_cycle, "handoff": handoff, "queue-put": queue_put, "queue-take": queue_take,
         "queue-take-plain": queue_take_plain}

if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[2] not in MODES:
        print("usage: kazoo_bench.py CONNECT_STRING %s N M" % "|".join(MODES), file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    MODES[sys.argv[2]](sys.argv[1], int(sys.argv[3]), int(sys.argv[4]))
