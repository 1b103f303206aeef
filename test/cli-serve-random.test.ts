// `peregrine serve --shape NAME --random-weights` (what `bench serve` runs against on a GPU
// without a checkpoint): it serves token-id prompts, and `bench serve` completes every request.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli', 'main.js');

test('serve --shape tiny-llama --random-weights answers bench serve', async () => {
  const server = spawn(process.execPath, [CLI, 'serve', '--shape', 'tiny-llama', '--random-weights', '--port', '0', '--max-num-seqs', '8'], { stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    const url = await new Promise<string>((resolve, reject) => {
      let out = '';
      server.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /listening on (\S+)/.exec(out);
        if (m) resolve(m[1]!);
      });
      server.on('exit', (code) => reject(new Error(`server exited with ${code} before listening: ${out}`)));
    });
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+$/);
    const models = (await (await fetch(`${url}/v1/models`)).json()) as { data: Array<{ id: string }> };
    assert.equal(models.data[0]!.id, 'tiny-llama');
    // text needs a tokenizer, which a random-weight model has none of
    const text = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'tiny-llama', prompt: 'hello', max_tokens: 2 }) });
    assert.equal(text.status, 400);
    const bench = spawnSync(process.execPath, [CLI, 'bench', 'serve', '--url', url, '--num-prompts', '6', '--rate', 'inf', '--isl', '8', '--osl', '4', '--vocab-size', '1000', '--json'], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(bench.status, 0, bench.stderr);
    const r = JSON.parse(bench.stdout.trim().split('\n').at(-1)!) as { completed: number; failed: number; outputTokPerS: number; itlMs: { mean: number }; engine: { numSteps: number; meanStepMs: number; deviceIdlePct: number } | null };
    // the server's engine counters (/metrics) over the run: at least one prefill and the decode steps after it
    assert.ok(r.engine && r.engine.numSteps >= 4 && r.engine.meanStepMs > 0 && r.engine.deviceIdlePct >= 0 && r.engine.deviceIdlePct <= 100, JSON.stringify(r.engine));
    // one chunk per generated token although there is no text: inter-token latency is measured
    assert.ok(Number.isFinite(r.itlMs.mean), `ITL ${r.itlMs.mean}`);
    assert.equal(r.completed, 6);
    assert.equal(r.failed, 0);
    assert.ok(r.outputTokPerS > 0);
  } finally {
    server.kill('SIGKILL');
  }
});

test('serve --shape needs --random-weights and excludes --model', () => {
  const a = spawnSync(process.execPath, [CLI, 'serve', '--shape', 'tiny-llama'], { encoding: 'utf8' });
  assert.notEqual(a.status, 0);
  assert.match(a.stderr, /--shape NAME and --random-weights go together/);
  const b = spawnSync(process.execPath, [CLI, 'serve', '--shape', 'nope', '--random-weights'], { encoding: 'utf8' });
  assert.notEqual(b.status, 0);
  assert.match(b.stderr, /unknown --shape "nope" \(known: .*llama-3\.1-8b/);
});
