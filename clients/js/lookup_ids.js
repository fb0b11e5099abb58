'use strict';
// Look up every customer id read from stdin (one per line) and print one JSON record (or null) per line.
// Usage: CHURN_REDIS_URL=redis://churn-reader:<password>@host:6379/0 node lookup_ids.js < ids.txt
const readline = require('readline');
const Redis = require('ioredis');
const { ChurnLookup } = require('./churn_lookup');

async function main() {
  const url = process.env.CHURN_REDIS_URL;
  if (!url) throw new Error('set CHURN_REDIS_URL to the reader\'s Redis URL');
  const redis = new Redis(url, { maxRetriesPerRequest: 2, connectTimeout: 10000, commandTimeout: 10000 });
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
