// `--quantization` at load (issue 6 point 1: FP8 "with no code from the user"): LLM.load and the
// CLI quantize a plain checkpoint once into a cache and reuse it; the result is exactly what
// `peregrine build` + load gives; already-quantized checkpoints and bad values are handled.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readdirSync, rmSync, utimesSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LLM } from '../src/api/llm.js';
import { buildQuantizedCheckpoint } from '../src/weights/quant/build.js';
import { fixtureDir } from './helpers/golden.js';

const FIXTURE = fixtureDir('llama-gqa-llama3');
const CLI = join(dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli', 'main.js');
const PROMPTS = [[1, 5, 9, 200, 17], [3, 3, 80, 41, 7, 300, 12]];
const PARAMS = { maxTokens: 8, temperature: 0, ignoreEos: true };

async function greedy(dir: string, options: Parameters<typeof LLM.load>[1] = {}): Promise<number[][]> {
  const llm = await LLM.load(dir, { maxNumSeqs: 4, maxNumBatchedTokens: 64, ...options });
  try {
    const outs = await llm.generate(PROMPTS, PARAMS);
    return outs.map((o) => [...o.outputs[0]!.tokenIds]);
  } finally {
    await llm.close();
  }
}

test('quantization at load equals peregrine build + load, and is built once per checkpoint', async () => {
  const tmp = mkdtempSync(join(tmpdir(), 'pgn-qload-'));
  try {
    const cacheDir = join(tmp, 'cache');
    for (const kind of ['fp8', 'int8', 'int4'] as const) {
      const built = join(tmp, `built-${kind}`);
      await buildQuantizedCheckpoint({ modelDir: FIXTURE, outDir: built, kind, jobs: 1 });
      let progress = 0;
      const atLoad = await greedy(FIXTURE, { quantization: kind, quantizationCacheDir: cacheDir, onQuantizeProgress: () => progress++ });
      assert.ok(progress > 0, `${kind}: the first load quantized`);
      assert.deepEqual(atLoad, await greedy(built), `${kind}: same tokens as the built checkpoint`);
      progress = 0;
      assert.deepEqual(await greedy(FIXTURE, { quantization: kind, quantizationCacheDir: cacheDir, onQuantizeProgress: () => progress++ }), atLoad);
      assert.equal(progress, 0, `${kind}: the second load reuses the cached build`);
    }
    const entries = readdirSync(join(cacheDir, 'quantized'));
    assert.equal(entries.length, 3, entries.join(', '));
    assert.ok(entries.every((e) => /^llama-gqa-llama3-(fp8|int8|int4)-[0-9a-f]{16}$/.test(e)), entries.join(', '));
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test('a changed checkpoint gets a new build; a quantized one loads as it is or is refused', async () => {
  const tmp = mkdtempSync(join(tmpdir(), 'pgn-qload-'));
  try {
    const cacheDir = join(tmp, 'cache');
    const copy = join(tmp, 'model');
    cpSync(FIXTURE, copy, { recursive: true });
    await greedy(copy, { quantization: 'int8', quantizationCacheDir: cacheDir });
    const weights = readdirSync(copy).find((f) => f.endsWith('.safetensors'))!;
    utimesSync(join(copy, weights), new Date(), new Date(Date.now() + 60_000));
    await greedy(copy, { quantization: 'int8', quantizationCacheDir: cacheDir });
    assert.equal(readdirSync(join(cacheDir, 'quantized')).length, 2, 'the touched checkpoint was quantized again');

    const int8 = join(tmp, 'int8');
    await buildQuantizedCheckpoint({ modelDir: FIXTURE, outDir: int8, kind: 'int8', jobs: 1 });
    const emptyCache = join(tmp, 'cache2');
    assert.deepEqual(await greedy(int8, { quantization: 'int8', quantizationCacheDir: emptyCache }), await greedy(int8));
    assert.deepEqual(readdirSync(tmp).includes('cache2'), false, 'nothing was built for an already-int8 checkpoint');
    await assert.rejects(LLM.load(int8, { quantization: 'fp8', quantizationCacheDir: emptyCache }), (e: any) =>
      e.code === 'PGN_ERR_INVALID_ARGUMENT' && /already quantized \(.*int8\): quantization fp8 needs the BF16 \/ F32 checkpoint/.test(e.message));
    await assert.rejects(LLM.load(FIXTURE, { quantization: 'int3' as never }), (e: any) => e.code === 'PGN_ERR_INVALID_ARGUMENT' && /fp8, int8, int4, got "int3"/.test(e.message));
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test('generate --quantization int8 and tensor parallel over the cached build', async () => {
  const tmp = mkdtempSync(join(tmpdir(), 'pgn-qload-'));
  try {
    const env = { ...process.env, PEREGRINE_CACHE_DIR: join(tmp, 'cache') };
    const run = (extra: string[]) => spawnSync(process.execPath, [CLI, 'generate', '--model', FIXTURE, '--prompt-ids', PROMPTS[0]!.join(','), '--max-tokens', '8', '--temperature', '0', '--ignore-eos', '--json', ...extra], { encoding: 'utf8', env, timeout: 60_000 });
    const r = run(['--quantization', 'int8']);
    assert.equal(r.status, 0, r.stderr);
    const ids = (JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { token_ids: number[] }).token_ids;
    assert.deepEqual(ids, (await greedy(FIXTURE, { quantization: 'int8', quantizationCacheDir: join(tmp, 'cache') }))[0]);
    assert.deepEqual((await greedy(FIXTURE, { quantization: 'int8', quantizationCacheDir: join(tmp, 'cache'), tp: 2 }))[0], ids, 'tp 2 loads the same build');
    const bad = run(['--quantization', 'int3']);
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /--quantization expects fp8, int8, int4, got "int3"/);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test('peregrine cache list / clear show and remove the cached builds', async () => {
  const tmp = mkdtempSync(join(tmpdir(), 'pgn-qload-'));
  try {
    const cacheDir = join(tmp, 'cache');
    const cache = (args: string[]) => spawnSync(process.execPath, [CLI, 'cache', ...args, '--dir', cacheDir], { encoding: 'utf8' });
    assert.match(cache(['list']).stdout, /no quantized builds in /);
    await greedy(FIXTURE, { quantization: 'int8', quantizationCacheDir: cacheDir });
    const listed = cache(['list']);
    assert.equal(listed.status, 0, listed.stderr);
    assert.match(listed.stdout, new RegExp(`llama-gqa-llama3-int8-[0-9a-f]{16} +[0-9.]+ [KMG]?i?B +from ${FIXTURE.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}`));
    const cleared = cache(['clear']);
    assert.match(cleared.stdout, /removed 1 quantized build from /);
    assert.deepEqual(readdirSync(join(cacheDir, 'quantized')), []);
    const bad = cache(['prune']);
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /unknown cache command "prune" \(list, clear\)/);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});
