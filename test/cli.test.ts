// The `peregrine` command end to end: greedy ids equal transformers' on every golden fixture,
// --help everywhere, and bad input gives a clear error and a non-zero exit.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fixtureDir, listFixtures, loadGolden } from './helpers/golden.js';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli', 'main.js');

function run(args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

for (const name of listFixtures()) {
  test(`generate --json on ${name} prints transformers' greedy ids`, () => {
    const g = loadGolden(name);
    const c = g.cases[1]!;
    const r = run(['generate', '--model', g.dir, '--prompt-ids', c.promptIds.join(','), '--max-tokens', String(c.greedyIds.length), '--temperature', '0', '--ignore-eos', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const last = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
    assert.deepEqual(last.token_ids, c.greedyIds);
    assert.equal(last.finish_reason, 'length');
    assert.ok('text' in last);
  });
}

test('generate with a text prompt uses the tokenizer', () => {
  const r = run(['generate', '--model', fixtureDir('llama-gqa-llama3'), '--prompt', 'It was the best of times', '--max-tokens', '5', '--temperature', '0', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const last = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
  assert.equal(typeof last.text, 'string');
  assert.ok(last.token_ids.length <= 5 && last.token_ids.length > 0);
  assert.equal(last.prompt_token_ids[0], 0, 'BOS first');
});

test('--help on every command', () => {
  for (const cmd of [[], ['generate'], ['info']]) {
    const r = run([...cmd, '--help']);
    assert.equal(r.code, 0, `${cmd.join(' ')}: ${r.stderr}`);
    assert.match(r.stdout, /peregrine/);
  }
});

test('info describes a checkpoint', () => {
  const r = run(['info', '--model', fixtureDir('qwen2'), '--json']);
  assert.equal(r.code, 0, r.stderr);
  const info = JSON.parse(r.stdout);
  assert.equal(info.architecture, 'Qwen2ForCausalLM');
  assert.deepEqual(info.tensor_dtypes, { BF16: info.tensors });
});

test('a wrong model path is a clear error', () => {
  const r = run(['generate', '--model', '/nonexistent/model', '--prompt-ids', '1,2']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /PGN_ERR_CONFIG_NOT_FOUND/);
  assert.match(r.stderr, /\/nonexistent\/model/);
});

test('an unknown architecture names the supported ones', () => {
  const dir = mkdtempSync(join(tmpdir(), 'pgn-cli-'));
  const cfg = JSON.parse(readFileSync(join(fixtureDir('mistral'), 'config.json'), 'utf8'));
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...cfg, architectures: ['NotAModelForCausalLM'] }));
  const r = run(['generate', '--model', dir, '--prompt-ids', '1,2']);
  rmSync(dir, { recursive: true });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /PGN_ERR_UNKNOWN_ARCHITECTURE/);
  assert.match(r.stderr, /LlamaForCausalLM/);
});

test('a truncated safetensors file names the file and the tensor', () => {
  const src = fixtureDir('mistral');
  const dir = mkdtempSync(join(tmpdir(), 'pgn-cli-'));
  for (const f of ['config.json', 'model.safetensors']) copyFileSync(join(src, f), join(dir, f));
  const st = join(dir, 'model.safetensors');
  truncateSync(st, statSync(st).size - 1000);
  const r = run(['generate', '--model', dir, '--prompt-ids', '1,2']);
  rmSync(dir, { recursive: true });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /PGN_ERR_WEIGHTS_TRUNCATED/);
  assert.match(r.stderr, /model\.safetensors/);
});

test('bad arguments are usage errors', () => {
  const model = fixtureDir('mistral');
  const cases: Array<[string[], RegExp]> = [
    [['generate', '--model', model], /exactly one of --prompt or --prompt-ids/],
    [['generate', '--model', model, '--prompt-ids', '1,x'], /not a token id/],
    [['generate', '--model', model, '--prompt-ids', '1', '--max-tokens', 'many'], /--max-tokens expects an integer/],
    [['generate', '--model', model, '--prompt-ids', '1', '--bogus'], /bogus/],
    [['generate', '--prompt-ids', '1'], /--model is required/],
    [['nope'], /unknown command/],
  ];
  for (const [args, re] of cases) {
    const r = run(args);
    assert.equal(r.code, 2, `${args.join(' ')} -> ${r.code} ${r.stderr}`);
    assert.match(r.stderr, re);
  }
});

test('invalid sampling values and out-of-vocabulary ids are rejected', () => {
  const model = fixtureDir('mistral');
  let r = run(['generate', '--model', model, '--prompt-ids', '1', '--top-p', '2']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /PGN_ERR_INVALID_ARGUMENT.*top_p/);
  r = run(['generate', '--model', model, '--prompt-ids', '1,99999']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /PGN_ERR_INVALID_ARGUMENT.*99999/);
  r = run(['generate', '--model', model, '--prompt', 'hello']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /PGN_ERR_TOKENIZER_MISSING/);
});

test('a prompt longer than the context is rejected', () => {
  const g = loadGolden('mistral');
  const ids = Array.from({ length: 5000 }, (_, i) => 3 + (i % 200));
  const r = run(['generate', '--model', g.dir, '--prompt-ids', ids.join(','), '--max-tokens', '4']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /PGN_ERR_PROMPT_TOO_LONG/);
});

test('--device cuda without a GPU is a clear error', { skip: process.env.PEREGRINE_TEST_HAS_GPU === '1' ? 'a GPU is present' : false }, async () => {
  const { CudaBackend } = await import('../src/backends/cuda/cuda-backend.js');
  if (CudaBackend.isAvailable()) return; // covered by the GPU suites
  const r = run(['generate', '--model', fixtureDir('mistral'), '--prompt-ids', '1,2', '--device', 'cuda']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /PGN_ERR_DEVICE_UNAVAILABLE/);
});
