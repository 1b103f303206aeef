// A 30-second soak (the long one is `npm run soak -- --clients 64 --minutes 10`): streaming
// clients that cancel at random against `peregrine serve` in a child process. No error but
// the cancels, no crash, no KV block held at the end, flat memory.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatReport, runSoak } from '../src/bench/soak.js';

const SOAK_MS = 30_000;
/** generous: V8 heap sizing moves the server's RSS by 5-25 MiB over a clean 30 s run; a leak shows in the 10-minute run */
const MAX_RSS_GROWTH_BYTES = 64 * 2 ** 20;

test('soak: 30 s of streaming clients that cancel at random', { timeout: SOAK_MS + 60_000 }, async (t) => {
  const r = await runSoak({ clients: 16, durationMs: SOAK_MS, serveArgs: ['--num-kv-blocks', '256'] });
  const table = formatReport(r);
  assert.equal(r.errors, 0, table);
  assert.equal(r.crashes, 0, table);
  assert.equal(r.leakedBlocks, 0, table);
  assert.ok(r.healthyAtEnd, table);
  assert.ok(r.requestsServed > 100 && r.requestsCancelled > 10, table);
  assert.ok(r.outputTokens > 0, table);
  assert.ok(r.rssGrowthBytes < MAX_RSS_GROWTH_BYTES, table);
  t.diagnostic(table.replaceAll('\n', ' | '));
});
