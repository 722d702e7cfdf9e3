// Test peer: Apache Curator's InterProcessMutex on a lock path, driven line by line on
// stdin so a test can interleave it with Paddock sidecars.
//
//   java CuratorLock CONNECT_STRING LOCK_PATH
//   stdin "acquire MILLIS" -> stdout "acquired" | "timeout"
//   stdin "release"        -> stdout "released"
//   stdin "quit"           -> exits
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.util.concurrent.TimeUnit;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.retry.ExponentialBackoffRetry;

public class CuratorLock {
    public static void main(String[] args) throws Exception {
        CuratorFramework client = CuratorFrameworkFactory.newClient(args[0], new ExponentialBackoffRetry(100, 5));
        client.start();
        client.blockUntilConnected();
        InterProcessMutex mutex = new InterProcessMutex(client, args[1]);
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        System.out.println("ready");
        System.out.flush();
        String line;
        while ((line = in.readLine()) != null) {
            String[] words = line.trim().split(" ");
            switch (words[0]) {
                case "acquire":
                    boolean got = mutex.acquire(Long.parseLong(words[1]), TimeUnit.MILLISECONDS);
                    System.out.println(got ? "acquired" : "timeout");
                    break;
                case "release":
                    mutex.release();
                    System.out.println("released");
                    break;
                case "quit":
                    client.close();
                    return;
                default:
                    System.out.println("unknown command " + words[0]);
            }
            System.out.flush();
        }
        client.close();
    }
}
