'use strict';
// Look up every customer id read from stdin (one per line) and print one JSON record (or null) per line.
// Usage: CHURN_REDIS_URL=redis://churn-reader:<password>@host:6379/0 node lookup_ids.js < ids.txt
// (or redis+cluster://churn-reader:<password>@host1:7000,host2:7000/0 for a Redis Cluster)
const readline = require('readline');
const Redis = require('ioredis');
const { ChurnLookup } = require('./churn_lookup');

async function main() {
  const url = process.env.CHURN_REDIS_URL;
  if (!url) throw new Error('set CHURN_REDIS_URL to the reader\'s Redis URL');
  const options = { maxRetriesPerRequest: 2, connectTimeout: 10000, commandTimeout: 10000 };
  let redis;
  if (/^rediss?\+cluster:\/\//.test(url)) {
    // redis+cluster://user:password@host1:port1,host2:port2/0 (the platform's cluster URL)
    const [, auth, hosts] = url.match(/^rediss?\+cluster:\/\/(?:([^@]*)@)?([^/]+)/);
    const [username, password] = (auth || '').split(':').map(decodeURIComponent);
    const nodes = hosts.split(',').map((h) => ({ host: h.split(':')[0], port: parseInt(h.split(':')[1] || '6379', 10) }));
    const tls = url.startsWith('rediss') ? { tls: {} } : {};
    redis = new Redis.Cluster(nodes, { redisOptions: { ...options, ...tls, username, password } });
  } else {
    redis = new Redis(url, options);
  }
  const scores = new ChurnLookup(redis, { prefix: process.env.CHURN_REDIS_KEY_PREFIX || 'churn' });
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  const out = [];
  for await (const id of lines) {
    if (id) out.push(JSON.stringify(await scores.lookup(id)));
  }
  process.stdout.write(out.join('\n') + '\n');
  redis.disconnect();
}

main().catch((err) => {
  console.error(String(err && err.stack ? err.stack : err));
  process.exit(1);
});
