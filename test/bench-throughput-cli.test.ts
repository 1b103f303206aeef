// `peregrine bench throughput` on the CPU backend (tiny random model): greedy (--temperature 0) and sampled runs
// both finish every request and split the device's steps into decode-only and prompt steps; a bad temperature
// is refused by name.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli', 'main.js');
const BASE = ['bench', 'throughput', '--shape', 'tiny-llama', '--random-weights', '--num-requests', '4', '--isl', '8', '--osl', '4', '--json'];

function run(extra: string[]) {
  return spawnSync(process.execPath, [CLI, ...BASE, ...extra], { encoding: 'utf8', timeout: 60_000 });
}

for (const temperature of [undefined, '0', '1']) {
  test(`bench throughput ${temperature === undefined ? '(greedy by default, as trtllm-bench)' : `--temperature ${temperature}`}: every request finishes, steps split by kind`, () => {
    const r = run(temperature === undefined ? [] : ['--temperature', temperature]);
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { numRequests: number; osl: number; temperature: number; outputTokPerS: number; numPreemptions: number; decode: { numSteps: number }; prefill: { numSteps: number } };
    assert.equal(out.temperature, Number(temperature ?? 0));
    assert.equal(out.numRequests, 4);
    assert.ok(out.outputTokPerS > 0);
    assert.equal(out.numPreemptions, 0);
    // 4 prompts of 8 tokens fit one step; each of the 3 later tokens is a decode-only step
    assert.equal(out.prefill.numSteps, 1);
    assert.equal(out.decode.numSteps, out.osl - 1);
  });
}

test('bench throughput refuses a temperature that is not a non-negative number', () => {
  const word = run(['--temperature', 'abc']);
  assert.equal(word.status, 2);
  assert.match(word.stderr, /--temperature expects a number, got "abc"/);
  const negative = run(['--temperature=-1']);
  assert.notEqual(negative.status, 0);
  assert.match(negative.stderr, /temperature must be non-negative, got -1/);
});
