import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;

/**
 * Look up every customer id read from stdin (one per line) and print one JSON record (or null) per line.
 * Usage: CHURN_REDIS_URL=redis://churn-reader:&lt;password&gt;@host:6379/0 java -cp . LookupIds &lt; ids.txt
 */
public final class LookupIds {
    public static void main(String[] args) throws Exception {
        String url = System.getenv("CHURN_REDIS_URL");
        if (url == null) throw new IllegalArgumentException("set CHURN_REDIS_URL to the reader's Redis URL");
        String prefix = System.getenv().getOrDefault("CHURN_REDIS_KEY_PREFIX", "churn");
        StringBuilder out = new StringBuilder();
        try (ChurnLookup.Resp redis = ChurnLookup.Resp.connect(url);
             BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
            ChurnLookup scores = new ChurnLookup(redis, prefix, 30_000);
            for (String id; (id = in.readLine()) != null; ) {
                if (!id.isEmpty()) out.append(ChurnLookup.FlatJson.write(scores.lookup(id))).append('\n');
            }
        }
        System.out.print(out);
        System.out.flush();
    }
}
