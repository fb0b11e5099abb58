'use strict';
// Open-loop lookups at a fixed rate through the project's JavaScript client (clients/js/churn_lookup.js):
// lookup i is started at start + i / rate whatever earlier ones do, and its latency is measured from that
// scheduled time (no coordinated omission). One connection, as the C floor (bench/latency/openloop.c).
// usage: CHURN_REDIS_URL=... node openloop.js RATE SECONDS IDS_FILE   -> one JSON line
const fs = require('fs');
const path = require('path');
const Redis = require(path.join(__dirname, '..', '..', 'clients', 'js', 'node_modules', 'ioredis'));
const { ChurnLookup } = require(path.join(__dirname, '..', '..', 'clients', 'js', 'churn_lookup'));

async function main() {
  const [rate, seconds] = [Number(process.argv[2]), Number(process.argv[3])];
  const ids = fs.readFileSync(process.argv[4], 'utf8').split('\n').filter(Boolean);
  const redis = new Redis(process.env.CHURN_REDIS_URL, { enableAutoPipelining: false });
  const scores = new ChurnLookup(redis);
  await scores.lookup(ids[0]); // reads churn:meta once, as a front-end does at start
  const total = Math.floor(rate * seconds);
  const latency = new Float64Array(total);
  let done = 0, misses = 0, errors = 0;
  const start = process.hrtime.bigint() + 20000000n;
  const stepNs = 1e9 / rate;
  let next = 0;
  await new Promise((resolve) => {
    const tick = () => {
      const now = process.hrtime.bigint();
      while (next < total && start + BigInt(Math.floor(next * stepNs)) <= now) {
        const i = next++;
        const at = start + BigInt(Math.floor(i * stepNs));
        scores.lookup(ids[i % ids.length]).then((record) => {
          latency[i] = Number(process.hrtime.bigint() - at) / 1000;
          if (record === null) misses++;
        }, () => { latency[i] = Number(process.hrtime.bigint() - at) / 1000; errors++; })
          .finally(() => { if (++done === total) resolve(); });
      }
      if (next < total) setImmediate(tick);
    };
    tick();
  });
  const end = process.hrtime.bigint();
  const sorted = Array.from(latency).sort((a, b) => a - b);
  const pct = (q) => sorted[Math.floor((total - 1) * q)];
  process.stdout.write(JSON.stringify({
    sent: total, misses, errors, rate_target: rate,
    rate_achieved: Math.round((total / (Number(end - start) / 1e9)) * 10) / 10,
    p50_us: pct(0.5), p99_us: pct(0.99), p999_us: pct(0.999), max_us: sorted[total - 1],
  }) + '\n');
  redis.disconnect();
}

main().catch((err) => { console.error(String(err && err.stack ? err.stack : err)); process.exit(1); });
