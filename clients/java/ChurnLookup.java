import java.io.BufferedInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.URI;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.zip.CRC32;

/**
 * Look a customer's precomputed churn score up in Redis, as the platform's reference client does
 * (churn.publish.redis_keys.lookup_score): every layout of the Redis contract (docs/reference/redis.md), one
 * round trip per lookup once churn:meta has been read.
 *
 * <p>Self-contained (Java 11+, no dependency): {@link Resp} speaks the three read commands a lookup needs.
 * With Jedis or Lettuce, implement {@link Commands} with their get / hget / hgetAll and keep the rest.
 *
 * <pre>
 *   try (ChurnLookup.Resp redis = ChurnLookup.Resp.connect("redis://churn-reader:&lt;password&gt;@host:6379/0")) {
 *       Map&lt;String, Object&gt; record = new ChurnLookup(redis).lookup("C00000042");   // null: no score
 *   }
 * </pre>
 */
public final class ChurnLookup {
    /** The read commands a lookup sends (implement with Jedis or Lettuce, or use {@link Resp}). */
    public interface Commands {
        String get(String key) throws IOException;

        String hget(String key, String field) throws IOException;

        Map<String, String> hgetAll(String key) throws IOException;
    }

    private static final int DEFAULT_BUCKETS = 65536;
    private final Commands redis;
    private final String prefix;
    private final long metaTtlMillis;
    private Map<String, String> meta;
    private long metaAt;
    private final Map<String, String[]> runInfo = new HashMap<>(); // hash layout: run id -> {version, scored_at}

    public ChurnLookup(Commands redis) {
        this(redis, "churn", 30_000);
    }

    public ChurnLookup(Commands redis, String prefix, long metaTtlMillis) {
        this.redis = redis;
        this.prefix = prefix;
        this.metaTtlMillis = metaTtlMillis;
    }

    /** CRC-32 (IEEE, unsigned) of the UTF-8 id: Python's zlib.crc32, the bucket hash. */
    public static long crc32(String customerId) {
        CRC32 crc = new CRC32();
        crc.update(customerId.getBytes(StandardCharsets.UTF_8));
        return crc.getValue();
    }

    /** The served marker, read again when fresh is set or the copy is older than the TTL. */
    public Map<String, String> meta(boolean fresh) throws IOException {
        if (fresh || meta == null || System.currentTimeMillis() - metaAt > metaTtlMillis) {
            meta = redis.hgetAll(prefix + ":meta");
            metaAt = System.currentTimeMillis();
        }
        return meta;
    }

    /** The score record of one customer (field names as in the contract), or null when it has none. */
    public Map<String, Object> lookup(String customerId) throws IOException {
        Map<String, String> copy = meta(false);
        String raw = fetch(customerId, copy);
        if (raw == null) { // no score, or a newer batch / bucket count: read the marker again
            Map<String, String> fresh = meta(true);
            if (fresh.equals(copy)) return null;
            copy = fresh;
            raw = fetch(customerId, copy);
            if (raw == null) return null;
        }
        return decode(customerId, raw, copy);
    }

    private String fetch(String customerId, Map<String, String> m) throws IOException {
        long buckets = Long.parseLong(m.getOrDefault("buckets", "").isEmpty() ? "" + DEFAULT_BUCKETS : m.get("buckets"));
        long bucket = crc32(customerId) % buckets;
        String layout = m.getOrDefault("layout", "");
        String groups = m.getOrDefault("groups", "");  // a Redis Cluster: the key carries its group's hash tag
        String name = groups.isEmpty() ? "" + bucket : "{" + (bucket * Long.parseLong(groups) / buckets) + "}:" + bucket;
        switch (layout) {
            case "compact": return redis.hget(prefix + ":c:" + buckets + ":" + name, customerId);
            case "hash": return redis.hget(prefix + ":h:" + bucket, customerId);
            case "json": return redis.get(prefix + ":score:" + customerId);
            default: return null; // nothing served yet
        }
    }

    private Map<String, Object> decode(String customerId, String raw, Map<String, String> m) throws IOException {
        String layout = m.get("layout");
        if (layout.equals("json")) return FlatJson.parse(raw);
        String[] fields = raw.split("\\|", -1);
        if (fields.length == 7 || fields.length == 9) { // an event re-score carries its own details
            Map<String, Object> r = record(customerId, Double.parseDouble(fields[0]), fields[2],
                    Integer.parseInt(fields[1]), fields[4], fields[3], fields[5]);
            r.put("source", "event");
            r.put("event_at", fields[6]);
            if (fields.length == 9) withArm(r, fields[7], fields[8]);
            return r;
        }
        if (layout.equals("hash")) {
            String[] info = runInfo.get(fields[3]);
            if (info == null) {
                String json = redis.hget(prefix + ":runs", fields[3]);
                Map<String, Object> parsed = json == null ? new HashMap<>() : FlatJson.parse(json);
                info = new String[] {(String) parsed.get("model_version"), (String) parsed.get("scored_at")};
                if (json != null) runInfo.put(fields[3], info);
            }
            return record(customerId, Double.parseDouble(fields[0]), fields[2], Integer.parseInt(fields[1]),
                    info[0], fields[3], info[1]);
        }
        Map<String, Object> r = compact(customerId, raw, m, true);
        return r != null ? r : compact(customerId, raw, meta(true), false);
    }

    private static Map<String, Object> compact(String customerId, String raw, Map<String, String> m, boolean strict) {
        long value = Long.parseLong(raw); // micro*1000 + (decile-1)*100 + band*10 + slot
        long micro = value / 1000, rest = value % 1000;
        int decile = (int) (rest / 100) + 1, band = (int) (rest / 10 % 10), slot = (int) (rest % 10);
        String s = Integer.toString(slot);
        // a slot neither served nor being published in this copy: a batch published since, read the marker again
        if (strict && !listed(m, "slots", "slot", s) && !listed(m, "slots_writing", "slot_writing", s)) return null;
        String info = m.get("slot_" + slot);
        if (info == null) return null;
        // run_id | model_version | scored_at | band names [| experiment | arm]
        String[] run = info.split("\\|", -1);
        Map<String, Object> r = record(customerId, micro / 1_000_000.0, run[3].split(",")[band], decile, run[1],
                run[0], run[2]);
        if (run.length >= 6) withArm(r, run[4], run[5]);
        return r;
    }

    /** True when slot {@code s} is in the marker's comma list {@code list} (or its single {@code single}). */
    private static boolean listed(Map<String, String> m, String list, String single, String s) {
        String digits = m.get(list) != null && !m.get(list).isEmpty() ? m.get(list) : m.get(single);
        if (digits == null) return false;
        for (String d : digits.split(",")) if (d.equals(s)) return true;
        return false;
    }

    /** The experiment and arm whose model served the score (an experiment's customer only). */
    private static void withArm(Map<String, Object> r, String experiment, String arm) {
        if (experiment.isEmpty()) return;
        r.put("experiment", experiment);
        r.put("arm", arm);
    }

    private static Map<String, Object> record(String id, double proba, String band, int decile, String version,
                                              String runId, String scoredAt) {
        Map<String, Object> r = new LinkedHashMap<>();
        r.put("customer_id", id);
        r.put("churn_probability", proba);
        r.put("risk_band", band);
        r.put("risk_decile", decile);
        r.put("model_version", version);
        r.put("run_id", runId);
        r.put("scored_at", scoredAt);
        return r;
    }

    /** A minimal RESP2 connection: AUTH, SELECT, and the three read commands of a lookup. */
    public static final class Resp implements Commands, AutoCloseable {
        private final Socket socket;
        private final InputStream in;
        private final OutputStream out;

        private Resp(Socket socket) throws IOException {
            this.socket = socket;
            this.in = new BufferedInputStream(socket.getInputStream());
            this.out = socket.getOutputStream();
        }

        /** Connect to redis://[user:password@]host:port/db, log in and select the database. */
        public static Resp connect(String url) throws IOException {
            URI uri = URI.create(url);
            Socket socket = new Socket();
            socket.connect(new InetSocketAddress(uri.getHost(), uri.getPort() < 0 ? 6379 : uri.getPort()), 10_000);
            socket.setSoTimeout(10_000);
            socket.setTcpNoDelay(true);
            Resp resp = new Resp(socket);
            String userInfo = uri.getRawUserInfo();
            if (userInfo != null) {
                String[] parts = userInfo.split(":", 2);
                String user = URLDecoder.decode(parts[0], StandardCharsets.UTF_8);
                String password = parts.length > 1 ? URLDecoder.decode(parts[1], StandardCharsets.UTF_8) : "";
                resp.call(user.isEmpty() ? new String[] {"AUTH", password} : new String[] {"AUTH", user, password});
            }
            String path = uri.getPath();
            if (path != null && path.length() > 1) resp.call("SELECT", path.substring(1));
            return resp;
        }

        @Override
        public String get(String key) throws IOException {
            return (String) call("GET", key);
        }

        @Override
        public String hget(String key, String field) throws IOException {
            return (String) call("HGET", key, field);
        }

        @Override
        public Map<String, String> hgetAll(String key) throws IOException {
            Object[] items = (Object[]) call("HGETALL", key);
            Map<String, String> map = new HashMap<>();
            for (int i = 0; i + 1 < items.length; i += 2) map.put((String) items[i], (String) items[i + 1]);
            return map;
        }

        /** Send one command and read its reply (an error reply raises IOException). */
        public Object call(String... args) throws IOException {
            ByteArrayOutputStream buf = new ByteArrayOutputStream();
            buf.write(("*" + args.length + "\r\n").getBytes(StandardCharsets.UTF_8));
            for (String a : args) {
                byte[] b = a.getBytes(StandardCharsets.UTF_8);
                buf.write(("$" + b.length + "\r\n").getBytes(StandardCharsets.UTF_8));
                buf.write(b);
                buf.write("\r\n".getBytes(StandardCharsets.UTF_8));
            }
            out.write(buf.toByteArray());
            out.flush();
            return reply();
        }

        private Object reply() throws IOException {
            int type = in.read();
            String line = line();
            switch (type) {
                case '+': return line;
                case '-': throw new IOException("Redis replied: " + line);
                case ':': return Long.parseLong(line);
                case '$': {
                    int n = Integer.parseInt(line);
                    if (n < 0) return null;
                    byte[] b = in.readNBytes(n + 2);
                    return new String(b, 0, n, StandardCharsets.UTF_8);
                }
                case '*': {
                    int n = Integer.parseInt(line);
                    if (n < 0) return null;
                    Object[] items = new Object[n];
                    for (int i = 0; i < n; i++) items[i] = reply();
                    return items;
                }
                default: throw new IOException("unexpected reply from Redis (type " + type + ")");
            }
        }

        private String line() throws IOException {
            ByteArrayOutputStream b = new ByteArrayOutputStream();
            int c;
            while ((c = in.read()) != '\r') {
                if (c < 0) throw new IOException("Redis closed the connection");
                b.write(c);
            }
            in.read(); // \n
            return b.toString(StandardCharsets.UTF_8);
        }

        @Override
        public void close() throws IOException {
            socket.close();
        }
    }

    /** Reads and writes the flat JSON objects of the contract (strings, numbers, null). */
    public static final class FlatJson {
        private FlatJson() {}

        public static Map<String, Object> parse(String text) {
            Map<String, Object> map = new LinkedHashMap<>();
            int[] pos = {skip(text, 0)};
            expect(text, pos, '{');
            while (text.charAt(skip(text, pos[0])) != '}') {
                pos[0] = skip(text, pos[0]);
                String key = string(text, pos);
                pos[0] = skip(text, pos[0]);
                expect(text, pos, ':');
                pos[0] = skip(text, pos[0]);
                map.put(key, value(text, pos));
                pos[0] = skip(text, pos[0]);
                if (text.charAt(pos[0]) == ',') pos[0]++;
            }
            return map;
        }

        private static Object value(String t, int[] pos) {
            char c = t.charAt(pos[0]);
            if (c == '"') return string(t, pos);
            if (t.startsWith("null", pos[0])) {
                pos[0] += 4;
                return null;
            }
            int start = pos[0];
            while (pos[0] < t.length() && "+-0123456789.eE".indexOf(t.charAt(pos[0])) >= 0) pos[0]++;
            String n = t.substring(start, pos[0]);
            return n.matches("-?\\d+") ? (Object) Integer.parseInt(n) : (Object) Double.parseDouble(n);
        }

        private static String string(String t, int[] pos) {
            expect(t, pos, '"');
            StringBuilder s = new StringBuilder();
            while (t.charAt(pos[0]) != '"') {
                char c = t.charAt(pos[0]++);
                if (c == '\\') {
                    char e = t.charAt(pos[0]++);
                    switch (e) {
                        case 'n': s.append('\n'); break;
                        case 't': s.append('\t'); break;
                        case 'r': s.append('\r'); break;
                        case 'b': s.append('\b'); break;
                        case 'f': s.append('\f'); break;
                        case 'u': s.append((char) Integer.parseInt(t.substring(pos[0], pos[0] + 4), 16)); pos[0] += 4; break;
                        default: s.append(e);
                    }
                } else {
                    s.append(c);
                }
            }
            pos[0]++;
            return s.toString();
        }

        private static int skip(String t, int i) {
            while (i < t.length() && Character.isWhitespace(t.charAt(i))) i++;
            return i;
        }

        private static void expect(String t, int[] pos, char c) {
            if (t.charAt(pos[0]) != c) throw new IllegalArgumentException("expected '" + c + "' at " + pos[0]);
            pos[0]++;
        }

        /** One record as a JSON object (null as null). */
        public static String write(Map<String, Object> record) {
            if (record == null) return "null";
            StringBuilder s = new StringBuilder("{");
            for (Map.Entry<String, Object> e : record.entrySet()) {
                if (s.length() > 1) s.append(',');
                s.append(quote(e.getKey())).append(':');
                Object v = e.getValue();
                s.append(v == null ? "null" : v instanceof String ? quote((String) v) : v.toString());
            }
            return s.append('}').toString();
        }

        private static String quote(String v) {
            StringBuilder s = new StringBuilder("\"");
            for (char c : v.toCharArray()) {
                if (c == '"' || c == '\\') s.append('\\').append(c);
                else if (c < 0x20) s.append(String.format("\\u%04x", (int) c));
                else s.append(c);
            }
            return s.append('"').toString();
        }
    }
}
