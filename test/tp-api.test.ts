// `tp` through the library API, the CLI and the server (CPU ranks in worker threads): the same
// greedy ids as transformers and as tp 1, a server that answers, and clear errors for a tp the
// model cannot be split into.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LLM } from '../src/api/llm.js';
import { SHAPES } from '../src/bench/shapes.js';
import { isPeregrineError } from '../src/errors.js';
import { KvCachePool } from '../src/runner/kv-cache.js';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { loadModelConfig } from '../src/models/config.js';
import { shardSpec } from '../src/parallel/sharding.js';
import { TpGroup } from '../src/parallel/tp-group.js';
import { loadGolden } from './helpers/golden.js';
import { post, withServer } from './server-harness.js';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli', 'main.js');

function cli(args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('LLM.load with tp 2 gives transformers\' greedy ids; stats, close', async () => {
  const g = loadGolden('llama-gqa-llama3'); // 4 heads, 2 KV heads
  const llm = await LLM.load(g.dir, { tp: 2, maxModelLen: 256, maxNumSeqs: 8, maxNumBatchedTokens: 256 });
  try {
    assert.equal(llm.tp, 2);
    assert.ok(llm.executor instanceof TpGroup);
    const outs = await llm.generate(g.cases.map((c) => c.promptIds), { temperature: 0, maxTokens: g.cases[0]!.greedyIds.length, ignoreEos: true });
    outs.forEach((o, i) => assert.deepEqual(o.outputs[0]!.tokenIds, g.cases[i]!.greedyIds, `case ${i}`));
    const s = llm.stats();
    assert.equal(s.numRunning, 0);
    assert.equal(s.numKvBlocksTotal, llm.executor.numBlocks);
    assert.throws(() => llm.runner, (e) => isPeregrineError(e, 'PGN_ERR_UNSUPPORTED_FEATURE') && /tensor parallel over 2 ranks/.test((e as Error).message));
  } finally {
    await llm.close();
  }
});

test('the CPU KV budget is split over the ranks\' shards', async () => {
  const dir = loadGolden('mistral').dir; // 1 KV head: replicated at tp 2, so a rank's block costs as much as tp 1's
  const kvCacheMemoryBytes = 4 * 1024 * 1024;
  const opts = { kvCacheMemoryBytes, maxModelLen: 128, maxNumSeqs: 1024 }; // the clamp to maxNumSeqs full-length sequences stays out of the way
  const one = await LLM.load(dir, opts);
  const two = await LLM.load(dir, { ...opts, tp: 2 });
  try {
    const { spec } = loadModelConfig(dir);
    const perRank = KvCachePool.bytesPerBlock(shardSpec(spec, 2, 0), 16, new CpuBackend());
    assert.equal(one.executor.numBlocks, Math.floor(kvCacheMemoryBytes / KvCachePool.bytesPerBlock(spec, 16, new CpuBackend())));
    assert.equal(two.executor.numBlocks, Math.floor(kvCacheMemoryBytes / 2 / perRank));
    assert.ok(two.executor.numBlocks < one.executor.numBlocks);
  } finally {
    await one.close();
    await two.close();
  }
  // 4 KV heads split 2 + 2: the same number of blocks as tp 1
  const split = loadGolden('llama-linear').dir;
  const [a, b] = [await LLM.load(split, opts), await LLM.load(split, { ...opts, tp: 2 })];
  try {
    assert.equal(b.executor.numBlocks, a.executor.numBlocks);
  } finally {
    await a.close();
    await b.close();
  }
});

test('a tp that does not divide the heads is PGN_ERR_INVALID_ARGUMENT, for a checkpoint and for random weights', async () => {
  const dir = loadGolden('llama-linear').dir; // 4 heads
  await assert.rejects(LLM.load(dir, { tp: 3 }), (e) => isPeregrineError(e, 'PGN_ERR_INVALID_ARGUMENT') && /tensor parallel size 3 does not divide the 4 attention heads/.test((e as Error).message));
  await assert.rejects(LLM.random(SHAPES['tiny-llama']!, { tp: 3 }), (e) => isPeregrineError(e, 'PGN_ERR_INVALID_ARGUMENT') && /tensor parallel size 3 does not divide the 8 attention heads/.test((e as Error).message));
});

test('generate --tp 2 --json prints the ids of tp 1', () => {
  const g = loadGolden('llama-linear');
  const c = g.cases[1]!;
  const args = ['generate', '--model', g.dir, '--prompt-ids', c.promptIds.join(','), '--max-tokens', String(c.greedyIds.length), '--temperature', '0', '--ignore-eos', '--json'];
  const ids = (r: ReturnType<typeof cli>) => {
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout.trim().split('\n').at(-1)!).token_ids as number[];
  };
  const one = ids(cli(args));
  assert.deepEqual(ids(cli([...args, '--tp', '2'])), one);
  assert.deepEqual(one, c.greedyIds);
});

test('generate --tp 3 on a 4-head model is a clear error', () => {
  const g = loadGolden('llama-linear');
  const r = cli(['generate', '--model', g.dir, '--prompt-ids', '1,2', '--tp', '3']);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /PGN_ERR_INVALID_ARGUMENT.*tensor parallel size 3 does not divide the 4 attention heads/);
});

test('bench latency --tp 2 times the group through rank 0 (random weights, no checkpoint)', () => {
  const r = cli(['bench', 'latency', '--shape', 'tiny-llama', '--random-weights', '--tp', '2', '--batch', '1,2', '--isl', '8', '--osl', '4', '--prefill', '16', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
  assert.equal(j.tp, 2);
  assert.match(j.model, /tiny-llama .*\(tp 2\)/);
  assert.deepEqual(j.decode.map((d: { batch: number }) => d.batch), [1, 2]);
  for (const d of j.decode) assert.ok(d.msPerStep > 0 && d.weightBytes > 0, JSON.stringify(d));
  assert.ok(j.prefill[0].ms > 0);
});

test('bench --quantization names a known kind, with random weights and with a checkpoint (quantized at load)', () => {
  const bad = cli(['bench', 'latency', '--shape', 'tiny-llama', '--random-weights', '--quantization', 'int3']);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /--quantization with random weights expects fp8(, \w+)*, got "int3"/);
  const ckpt = cli(['bench', 'latency', '--model', loadGolden('llama-linear').dir, '--quantization', 'int3']);
  assert.notEqual(ckpt.code, 0);
  assert.match(ckpt.stderr, /--quantization expects fp8, int8, int4, got "int3"/);
});

test('a server started with tp 2 answers a completion', async () => {
  await withServer({ engine: { tp: 2, maxModelLen: 128, maxNumSeqs: 4, maxNumBatchedTokens: 128 } }, async (s) => {
    const r = await post(`${s.url}/v1/completions`, { model: s.app.context.servedModelName, prompt: 'It was the best of times', max_tokens: 5, temperature: 0 });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(typeof r.body.choices[0].text, 'string');
    assert.ok(r.body.usage.completion_tokens > 0 && r.body.usage.completion_tokens <= 5);
    // and the same text as tp 1
    await withServer({ engine: { maxModelLen: 128, maxNumSeqs: 4, maxNumBatchedTokens: 128 } }, async (s1) => {
      const r1 = await post(`${s1.url}/v1/completions`, { model: s1.app.context.servedModelName, prompt: 'It was the best of times', max_tokens: 5, temperature: 0 });
      assert.equal(r1.body.choices[0].text, r.body.choices[0].text);
    });
  });
});
