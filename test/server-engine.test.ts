// The server over the engine worker: disconnects free their blocks, concurrent greedy requests
// give the tokens each gives alone (also under preemption), metrics add up, and a stop
// (in-process drain and a real SIGTERM) lets running requests finish.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as http from 'node:http';
import { fileURLToPath } from 'node:url';
import { get, LLAMA, openStream, parseSse, post, randomPrompt, waitIdle, withServer } from './server-harness.js';

const LONG = { prompt: 'It was', max_tokens: 900, ignore_eos: true };

function metricValue(text: string, name: string): number {
  const line = text.split('\n').find((l) => l.startsWith(name + '{') || l.startsWith(name + ' '));
  assert.ok(line, `metric ${name} missing`);
  return Number(line.split(' ').at(-1));
}

test('a client that disconnects mid-stream or mid-wait aborts its request: no block stays allocated', async () => {
  await withServer({}, async (s) => {
    const url = `${s.url}/v1/completions`;
    const ac = new AbortController();
    const res = await fetch(url, { method: 'POST', body: JSON.stringify({ ...LONG, stream: true }), signal: ac.signal });
    const reader = res.body!.getReader();
    await reader.read();
    await reader.read();
    assert.ok((await s.engine.stats()).numUsedBlocks > 0, 'the request holds blocks while it runs');
    ac.abort();

    // a non-streamed request whose client goes away while it generates
    const req = http.request(`${s.url}/v1/chat/completions`, { method: 'POST', headers: { 'Content-Type': 'application/json' } });
    req.on('error', () => {});
    req.end(JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 900, ignore_eos: true }));
    await new Promise((r) => setTimeout(r, 100));
    req.destroy();

    const idle = await waitIdle(s);
    assert.deepEqual([idle.numRunning, idle.numWaiting, idle.numUsedBlocks], [0, 0, 0]);
    const generated = metricValue((await get(`${s.url}/metrics`)).body, 'peregrine_generation_tokens_total');
    assert.ok(generated < 2 * 900, `the aborted requests stopped early (${generated} tokens generated)`);
  });
});

test('32 concurrent greedy requests give the tokens each gives alone, under preemption too', async () => {
  // 12 blocks of 16 tokens hold two requests of up to 84 tokens: 32 at once force preemptions
  await withServer({ engine: { maxNumSeqs: 16, maxNumBatchedTokens: 64, numKvBlocks: 12 } }, async (s) => {
    const url = `${s.url}/v1/completions`;
    const bodies = Array.from({ length: 32 }, (_, i) => ({
      prompt: randomPrompt(3 + ((i * 7) % 58), i + 1),
      max_tokens: 4 + ((i * 5) % 21),
      temperature: 0,
      ignore_eos: true,
      logprobs: 0,
      return_tokens_as_token_ids: true,
    }));
    const tokensOf = (r: { status: number; body: any }) => {
      assert.equal(r.status, 200, JSON.stringify(r.body));
      return r.body.choices[0].logprobs.tokens as string[];
    };
    const alone: string[][] = [];
    for (const b of bodies) alone.push(tokensOf(await post(url, b)));
    const together = (await Promise.all(bodies.map((b) => post(url, b)))).map(tokensOf);
    together.forEach((t, i) => {
      assert.equal(t.length, bodies[i]!.max_tokens);
      assert.deepEqual(t, alone[i], `request ${i}`);
    });
    const metrics = (await get(`${s.url}/metrics`)).body as string;
    assert.ok(metricValue(metrics, 'peregrine_num_preemptions_total') > 0, 'the small pool forced preemptions');
    assert.equal((await waitIdle(s)).numUsedBlocks, 0);
  });
});

test('metrics count prompt and generated tokens and observe each request', async () => {
  await withServer({}, async (s) => {
    let prompt = 0;
    let completion = 0;
    for (const max_tokens of [3, 5, 7]) {
      const r = await post(`${s.url}/v1/completions`, { prompt: 'Four score and seven years ago our fathers brought forth on this continent, a new nation', max_tokens, ignore_eos: true });
      prompt += r.body.usage.prompt_tokens;
      completion += r.body.usage.completion_tokens;
    }
    const m = (await get(`${s.url}/metrics`)).body as string;
    assert.equal(metricValue(m, 'peregrine_prompt_tokens_total'), prompt);
    assert.equal(metricValue(m, 'peregrine_generation_tokens_total'), completion);
    assert.equal(metricValue(m, 'peregrine_time_to_first_token_seconds_count'), 3);
    assert.equal(metricValue(m, 'peregrine_e2e_request_latency_seconds_count'), 3);
    assert.equal(metricValue(m, 'peregrine_time_per_output_token_seconds_count'), 3);
    assert.ok(metricValue(m, 'peregrine_prefix_cache_hit_rate') > 0, 'the repeated prompt hit the prefix cache');
    assert.equal(metricValue(m, 'peregrine_engine_healthy'), 1);
    // every completion token came from a step (prefill steps add some); busy and idle device time add up
    assert.ok(metricValue(m, 'peregrine_engine_steps_total') >= completion / 3, `steps ${metricValue(m, 'peregrine_engine_steps_total')} for ${completion} tokens of 3 requests`);
    assert.ok(metricValue(m, 'peregrine_engine_step_busy_seconds_total') > 0);
    assert.ok(metricValue(m, 'peregrine_engine_step_idle_seconds_total') >= 0);
    assert.match(m, /process_resident_memory_bytes/);
  });
});

test('the HTTP thread stays responsive while the engine is busy', async () => {
  await withServer({}, async (s) => {
    const ac = new AbortController();
    const load = Array.from({ length: 16 }, () =>
      fetch(`${s.url}/v1/completions`, { method: 'POST', body: JSON.stringify({ ...LONG, stream: true }), signal: ac.signal }).then((r) => r.body?.cancel()).catch(() => {}),
    );
    await new Promise((r) => setTimeout(r, 200));
    const t0 = performance.now();
    const models = await get(`${s.url}/v1/models`);
    const latencyMs = performance.now() - t0;
    assert.equal(models.status, 200);
    assert.ok(latencyMs < 1000, `GET /v1/models took ${latencyMs.toFixed(0)} ms under load`);
    ac.abort();
    await Promise.all(load);
  });
});

test('drain: a stop refuses new requests with 503 and lets running ones finish', async () => {
  await withServer({}, async (s) => {
    const running = await openStream(`${s.url}/v1/completions`, { prompt: 'It was', max_tokens: 400, ignore_eos: true, stream: true });
    assert.equal(s.app.inFlight, 1);
    const stopped = s.shutdown();
    const refused = await post(`${s.url}/v1/completions`, { prompt: 'hi', max_tokens: 1 });
    assert.equal(refused.status, 503);
    assert.equal(refused.body.error.code, 'shutting_down');
    assert.equal(refused.headers.get('connection'), 'close');
    const events = parseSse(await running.rest());
    assert.equal(events.at(-1), '[DONE]');
    assert.equal((events.at(-2) as any).choices[0].finish_reason, 'length');
    await stopped;
    assert.equal(s.engine.isAlive, false);
  });
});

test('SIGTERM on `peregrine serve` finishes the running stream, then the process exits 0', async () => {
  const serveJs = fileURLToPath(new URL('../src/cli/serve.js', import.meta.url));
  const code = `import(${JSON.stringify(serveJs)}).then((m) => m.runServe(process.argv.slice(1)))`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', code, '--', '--model', LLAMA, '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (m) resolve(m[1]!);
    });
    void exited.then(() => reject(new Error(`serve exited early: ${stderr}`)));
  });
  const running = await openStream(`${url}/v1/completions`, { prompt: 'It was', max_tokens: 400, ignore_eos: true, stream: true });
  child.kill('SIGTERM');
  const events = parseSse(await running.rest());
  assert.equal(events.at(-1), '[DONE]');
  assert.equal((events.at(-2) as any).choices[0].finish_reason, 'length');
  assert.equal(await exited, 0, stderr);
  assert.match(stderr, /SIGTERM: admitting no new requests, finishing 1 running/);
});
