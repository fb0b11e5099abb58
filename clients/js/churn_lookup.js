'use strict';
/**
 * Look a customer's precomputed churn score up in Redis, as the platform's reference client does
 * (churn.publish.redis_keys.lookup_score): every layout of the Redis contract, one round trip per lookup
 * once `churn:meta` has been read (docs/reference/redis.md).
 *
 *   const Redis = require('ioredis');
 *   const { ChurnLookup } = require('./churn_lookup');
 *   const scores = new ChurnLookup(new Redis('redis://churn-reader:<password>@host:6379/0'));
 *   // a Redis Cluster: new ChurnLookup(new Redis.Cluster([{ host, port }], { redisOptions: { username, password } }))
 *   await scores.lookup('C00000042');
 *   // { customer_id: 'C00000042', churn_probability: 0.812346, risk_band: 'high', risk_decile: 10,
 *   //   model_version: '2026-11-20-tpot-3f9a1c', run_id: '2026-11-20', scored_at: '2026-11-20T02:14:03Z' }
 */
const zlib = require('zlib');

const DEFAULT_BUCKETS = 65536;

let CRC_TABLE = null;

/** CRC-32 (IEEE, unsigned) of the UTF-8 bytes of `text`: Python's zlib.crc32, the bucket hash. */
function crc32(text) {
  const bytes = Buffer.from(text, 'utf8');
  if (typeof zlib.crc32 === 'function') return zlib.crc32(bytes) >>> 0; // Node >= 20.15 / 22.2
  if (CRC_TABLE === null) {
    CRC_TABLE = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      CRC_TABLE[n] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (const b of bytes) crc = CRC_TABLE[(crc ^ b) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/** `(probability, decile, band index, slot)` of a compact value `micro*1000 + (decile-1)*100 + band*10 + slot`. */
function decodeCompact(value) {
  const v = Number(value);
  const micro = Math.floor(v / 1000);
  const rest = v - micro * 1000;
  return [micro / 1000000, Math.floor(rest / 100) + 1, Math.floor(rest / 10) % 10, rest % 10];
}

/** The record with the experiment and arm whose model served it (an experiment's customer only). */
function withArm(record, experiment, arm) {
  if (experiment) Object.assign(record, { experiment, arm });
  return record;
}

/** True when `slot` is in the marker's comma list `list` (or its single `single`, from before lists). */
function listed(meta, list, single, slot) {
  return (meta[list] || meta[single] || '').split(',').includes(String(slot));
}

function eventRecord(customerId, fields) {
  const [proba, decile, band, runId, version, scoredAt, eventAt, experiment, arm] = fields;
  return withArm({
    customer_id: customerId, churn_probability: parseFloat(proba), risk_band: band,
    risk_decile: parseInt(decile, 10), model_version: version, run_id: runId, scored_at: scoredAt,
    source: 'event', event_at: eventAt,
  }, experiment, arm);
}

function sameMeta(a, b) {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => a[k] === b[k]);
}

class ChurnLookup {
  /**
   * @param redis an ioredis client (or Cluster) logged in as a reader
   * @param options.prefix CHURN_REDIS_KEY_PREFIX of the platform ("churn")
   * @param options.metaTtlMs how long a copy of churn:meta is trusted (30 s, as the reference client)
   */
  constructor(redis, { prefix = 'churn', metaTtlMs = 30000 } = {}) {
    this.redis = redis;
    this.prefix = prefix;
    this.metaTtlMs = metaTtlMs;
    this.metaCopy = null;
    this.metaAt = 0;
    this.runInfo = new Map(); // hash layout: run id -> {model_version, scored_at}
  }

  /** The served marker, read again when `fresh` or older than metaTtlMs. */
  async meta(fresh = false) {
    if (fresh || this.metaCopy === null || Date.now() - this.metaAt > this.metaTtlMs) {
      this.metaCopy = await this.redis.hgetall(`${this.prefix}:meta`);
      this.metaAt = Date.now();
    }
    return this.metaCopy;
  }

  /** The score record of one customer, or null when it has none. */
  async lookup(customerId) {
    let meta = await this.meta();
    let raw = await this.fetch(customerId, meta);
    if (raw === null) { // no score, or a newer batch / bucket count: read the marker again
      const fresh = await this.meta(true);
      if (sameMeta(fresh, meta)) return null;
      meta = fresh;
      raw = await this.fetch(customerId, meta);
      if (raw === null) return null;
    }
    return this.decode(customerId, raw, meta);
  }

  /** The one command of a lookup under `meta`'s layout. */
  async fetch(customerId, meta) {
    const buckets = parseInt(meta.buckets || DEFAULT_BUCKETS, 10);
    const bucket = crc32(customerId) % buckets;
    const groups = parseInt(meta.groups || '0', 10); // a Redis Cluster: the key carries its group's hash tag
    const name = groups ? `{${Math.floor((bucket * groups) / buckets)}}:${bucket}` : `${bucket}`;
    switch (meta.layout) {
      case 'compact': return this.redis.hget(`${this.prefix}:c:${buckets}:${name}`, customerId);
      case 'hash': return this.redis.hget(`${this.prefix}:h:${bucket}`, customerId);
      case 'json': return this.redis.get(`${this.prefix}:score:${customerId}`);
      default: return null; // nothing served yet
    }
  }

  async decode(customerId, raw, meta) {
    if (meta.layout === 'json') return JSON.parse(raw);
    const fields = raw.split('|');
    if (fields.length === 7 || fields.length === 9) return eventRecord(customerId, fields); // an event re-score
    if (meta.layout === 'hash') return this.hashRecord(customerId, fields);
    let record = this.compactRecord(customerId, raw, meta, true);
    if (record === null) record = this.compactRecord(customerId, raw, await this.meta(true), false);
    return record;
  }

  compactRecord(customerId, raw, meta, strict) {
    const [proba, decile, band, slot] = decodeCompact(raw);
    // a slot neither served nor being published in this copy: a batch published since, read the marker again
    if (strict && !listed(meta, 'slots', 'slot', slot) && !listed(meta, 'slots_writing', 'slot_writing', slot)) {
      return null;
    }
    const info = meta[`slot_${slot}`];
    if (!info) return null;
    const [runId, version, scoredAt, bands, experiment, arm] = info.split('|');
    return withArm({
      customer_id: customerId, churn_probability: proba, risk_band: bands.split(',')[band],
      risk_decile: decile, model_version: version, run_id: runId, scored_at: scoredAt,
    }, experiment, arm);
  }

  async hashRecord(customerId, fields) {
    const [proba, decile, band, runId] = fields;
    let info = this.runInfo.get(runId);
    if (info === undefined) {
      const rawInfo = await this.redis.hget(`${this.prefix}:runs`, runId);
      info = rawInfo === null ? { model_version: null, scored_at: null } : JSON.parse(rawInfo);
      if (rawInfo !== null) this.runInfo.set(runId, info);
    }
    return {
      customer_id: customerId, churn_probability: parseFloat(proba), risk_band: band,
      risk_decile: parseInt(decile, 10), model_version: info.model_version, run_id: runId,
      scored_at: info.scored_at,
    };
  }
}

module.exports = { ChurnLookup, crc32, decodeCompact };
