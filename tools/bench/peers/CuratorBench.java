// Benchmark peer: Apache Curator 5.4 recipes against a ZooKeeper ensemble, doing the same
// work as kazoo_bench.py so both can be compared with Paddock.
//
//   java -cp CLASSES:JARS CuratorBench CONNECT_STRING MODE ARGS...
//
//   lock-cycle CLIENTS OPS_PER_CLIENT  each client cycles acquire+release of InterProcessMutex
//                                      on its own /bench/curator/lock-<i> (20 unmeasured warm-up
//                                      cycles first); latency per cycle
//   handoff CONTENDERS ROUNDS          all clients contend on /bench/curator/handoff; ROUNDS
//                                      acquisitions in total; latency from a release to the next
//                                      holder's acquire
//   queue-put ITEMS BATCH              one producer puts ITEMS 16-byte items into a DistributedQueue
//                                      (lockPath mode, synchronous puts): put() if BATCH=1 (latency
//                                      per put), else putMulti() of BATCH items per queue node
//   queue-take ITEMS CONSUMERS         ITEMS items are enqueued untimed (one node each), then
//                                      CONSUMERS clients drain them with a QueueConsumer in lockPath
//                                      (at-least-once) mode; timed until ITEMS were consumed
//
// Every client is its own CuratorFramework (as if it were a separate process). The mode's paths
// are deleted before each run. Prints one JSON line to stdout:
//   {"peer":"curator","mode":...,"ops":N,"seconds":S,"rate":N/S,"median_us":M|null,"p99_us":P|null}
// Put slf4j-nop.jar on the classpath to keep ZooKeeper/Curator logging quiet.
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.Locale;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.framework.recipes.queue.DistributedQueue;
import org.apache.curator.framework.recipes.queue.MultiItem;
import org.apache.curator.framework.recipes.queue.QueueBuilder;
import org.apache.curator.framework.recipes.queue.QueueConsumer;
import org.apache.curator.framework.recipes.queue.QueueSerializer;
import org.apache.curator.framework.state.ConnectionState;
import org.apache.curator.retry.ExponentialBackoffRetry;
import org.apache.zookeeper.KeeperException;

public class CuratorBench {
    static final String ROOT = "/bench/curator";
    static final String QUEUE = ROOT + "/queue", QUEUE_LOCKS = ROOT + "/queue-locks";
    static final String PAYLOAD = "0123456789abcdef"; // 16 bytes
    static final int WARMUP = 20;
    static String connectString;

    static final QueueSerializer<String> SERIALIZER = new QueueSerializer<String>() {
        public byte[] serialize(String item) { return item.getBytes(StandardCharsets.UTF_8); }
        public String deserialize(byte[] bytes) { return new String(bytes, StandardCharsets.UTF_8); }
    };

    interface Worker { void run(int i, CuratorFramework client, CyclicBarrier go) throws Exception; }

    public static void main(String[] args) throws Exception {
        if (args.length != 4) {
            System.err.println("usage: CuratorBench CONNECT_STRING lock-cycle|handoff|queue-put|queue-take N M");
            System.exit(2);
        }
        connectString = args[0];
        int a = Integer.parseInt(args[2]), b = Integer.parseInt(args[3]);
        switch (args[1]) {
            case "lock-cycle": lockCycle(a, b); break;
            case "handoff": handoff(a, b); break;
            case "queue-put": queuePut(a, b); break;
            case "queue-take": queueTake(a, b); break;
            default: System.err.println("unknown mode " + args[1]); System.exit(2);
        }
        System.exit(0); // don't wait for Curator's background threads
    }

    static void lockCycle(int clients, int ops) throws Exception {
        String[] paths = new String[clients];
        for (int i = 0; i < clients; i++) paths[i] = ROOT + "/lock-" + i;
        wipe(paths);
        long[] lat = new long[clients * ops];
        long t0 = runClients(clients, (i, client, go) -> {
            InterProcessMutex mutex = new InterProcessMutex(client, paths[i]);
            for (int k = 0; k < WARMUP; k++) { mutex.acquire(); mutex.release(); }
            go.await();
            for (int k = 0; k < ops; k++) {
                long t = System.nanoTime();
                mutex.acquire();
                mutex.release();
                lat[i * ops + k] = System.nanoTime() - t;
            }
        });
        report("lock-cycle", clients * ops, System.nanoTime() - t0, lat);
    }

    static void handoff(int contenders, int rounds) throws Exception {
        String path = ROOT + "/handoff";
        wipe(path);
        AtomicInteger acquisitions = new AtomicInteger();
        AtomicLong releasedAt = new AtomicLong(), endAt = new AtomicLong();
        long[] lat = new long[Math.max(rounds - 1, 0)];
        long t0 = runClients(contenders, (i, client, go) -> {
            InterProcessMutex mutex = new InterProcessMutex(client, path);
            go.await();
            while (true) {
                mutex.acquire();
                long now = System.nanoTime();
                int n = acquisitions.incrementAndGet();
                if (n > rounds) { mutex.release(); return; } // done: just pass the lock on
                if (n > 1) lat[n - 2] = now - releasedAt.get();
                if (n == rounds) endAt.set(now);
                releasedAt.set(System.nanoTime());
                mutex.release();
            }
        });
        report("handoff", rounds, endAt.get() - t0, lat);
    }

    static void queuePut(int items, int batch) throws Exception {
        wipe(QUEUE, QUEUE_LOCKS);
        try (CuratorFramework client = connect()) {
            // putInBackground(false): put()/putMulti() return once the node is created.
            DistributedQueue<String> queue = QueueBuilder.builder(client, null, SERIALIZER, QUEUE)
                .lockPath(QUEUE_LOCKS).putInBackground(false).buildQueue();
            queue.start();
            long[] lat = batch == 1 ? new long[items] : null;
            long t0 = System.nanoTime();
            for (int done = 0; done < items; ) {
                int n = Math.min(batch, items - done);
                long t = System.nanoTime();
                if (batch == 1) queue.put(PAYLOAD); else queue.putMulti(items(n));
                if (lat != null) lat[done] = System.nanoTime() - t;
                done += n;
            }
            report("queue-put", items, System.nanoTime() - t0, lat);
            queue.close();
        }
    }

    static void queueTake(int items, int consumers) throws Exception {
        wipe(QUEUE, QUEUE_LOCKS);
        try (CuratorFramework client = connect()) {
            // Untimed fill, one node per item (like kazoo's put_all), pipelined via background puts.
            DistributedQueue<String> producer = QueueBuilder.builder(client, null, SERIALIZER, QUEUE)
                .lockPath(QUEUE_LOCKS).buildQueue();
            producer.start();
            for (int k = 0; k < items; k++) producer.put(PAYLOAD);
            if (!producer.flushPuts(120, TimeUnit.SECONDS)) throw new IllegalStateException("fill timed out");
            producer.close();
        }
        AtomicInteger consumed = new AtomicInteger();
        AtomicLong endAt = new AtomicLong();
        CountDownLatch allConsumed = new CountDownLatch(1);
        long t0 = runClients(consumers, (i, client, go) -> {
            QueueConsumer<String> consumer = new QueueConsumer<String>() {
                public void consumeMessage(String item) {
                    if (consumed.incrementAndGet() == items) {
                        endAt.set(System.nanoTime());
                        allConsumed.countDown();
                    }
                }
                public void stateChanged(CuratorFramework c, ConnectionState s) {}
            };
            DistributedQueue<String> queue = QueueBuilder.builder(client, consumer, SERIALIZER, QUEUE)
                .lockPath(QUEUE_LOCKS).buildQueue();
            go.await();
            queue.start();
            allConsumed.await();
            queue.close();
        });
        report("queue-take", items, endAt.get() - t0, null);
    }

    /** Runs worker on n threads, each with its own connected client; the worker calls go.await()
     *  when set up. Returns System.nanoTime() at the moment all workers passed go; returns after
     *  all workers finished. Any worker failure aborts the process. */
    static long runClients(int n, Worker worker) throws Exception {
        CyclicBarrier go = new CyclicBarrier(n + 1);
        Thread[] threads = new Thread[n];
        for (int i = 0; i < n; i++) {
            int id = i;
            threads[i] = new Thread(() -> {
                try (CuratorFramework client = connect()) {
                    worker.run(id, client, go);
                } catch (Throwable e) {
                    e.printStackTrace();
                    System.exit(1);
                }
            });
            threads[i].start();
        }
        go.await();
        long t0 = System.nanoTime();
        for (Thread t : threads) t.join();
        return t0;
    }

    static CuratorFramework connect() throws InterruptedException {
        CuratorFramework client = CuratorFrameworkFactory.newClient(connectString, new ExponentialBackoffRetry(100, 5));
        client.start();
        if (!client.blockUntilConnected(30, TimeUnit.SECONDS)) throw new IllegalStateException("cannot connect to " + connectString);
        return client;
    }

    static void wipe(String... paths) throws Exception {
        try (CuratorFramework client = connect()) {
            for (String p : paths) {
                try { client.delete().deletingChildrenIfNeeded().forPath(p); } catch (KeeperException.NoNodeException ignore) {}
            }
        }
    }

    static MultiItem<String> items(int n) {
        int[] left = {n};
        return () -> left[0]-- > 0 ? PAYLOAD : null;
    }

    static void report(String mode, long ops, long nanos, long[] lat) {
        double seconds = nanos / 1e9;
        String median = "null", p99 = "null";
        if (lat != null && lat.length > 0) {
            long[] sorted = lat.clone();
            Arrays.sort(sorted);
            median = percentileUs(sorted, 0.50);
            p99 = percentileUs(sorted, 0.99);
        }
        System.out.printf(Locale.ROOT,
            "{\"peer\":\"curator\",\"mode\":\"%s\",\"ops\":%d,\"seconds\":%.6f,\"rate\":%.1f,\"median_us\":%s,\"p99_us\":%s}%n",
            mode, ops, seconds, ops / seconds, median, p99);
        System.out.flush();
    }

    /** Nearest-rank percentile of sorted nanosecond samples, in microseconds. */
    static String percentileUs(long[] sorted, double q) {
        int idx = Math.max(0, (int) Math.ceil(q * sorted.length) - 1);
        return String.format(Locale.ROOT, "%.1f", sorted[idx] / 1000.0);
    }
}
