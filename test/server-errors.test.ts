// Every error the server answers with: its status and its OpenAI-shaped body
// {"error": {"message", "type", "param", "code"}}.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as http from 'node:http';
import OpenAI from 'openai';
import { get, NO_TOKENIZER, parseSse, post, randomPrompt, request, withServer, type JsonResponse } from './server-harness.js';

function assertError(r: JsonResponse, status: number, code: string, param: string | null = null): void {
  assert.equal(r.status, status, JSON.stringify(r.body));
  assert.deepEqual(Object.keys(r.body), ['error']);
  const e = r.body.error;
  assert.deepEqual(Object.keys(e).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(e.code, code);
  assert.equal(e.param, param);
  assert.equal(e.type, status >= 500 ? 'server_error' : 'invalid_request_error');
  assert.ok(typeof e.message === 'string' && e.message.length > 10, e.message);
}

const completions = (url: string) => `${url}/v1/completions`;
const chat = (url: string) => `${url}/v1/chat/completions`;

test('400: malformed JSON, a body that is not an object, an empty body', async () => {
  await withServer({}, async (s) => {
    assertError(await post(completions(s.url), '{"prompt": "hi",'), 400, 'invalid_json');
    assertError(await post(completions(s.url), '[1, 2]'), 400, 'invalid_json');
    assertError(await post(chat(s.url), ''), 400, 'invalid_json');
  });
});

test('400: each invalid parameter is named', async () => {
  await withServer({}, async (s) => {
    const msg = [{ role: 'user', content: 'hi' }];
    const cases: Array<[string, Record<string, unknown>, string, string]> = [
      [completions(s.url), { prompt: 'hi', temperature: -1 }, 'temperature', 'invalid_value'],
      [completions(s.url), { prompt: 'hi', top_p: 2 }, 'top_p', 'invalid_value'],
      [completions(s.url), { prompt: 'hi', n: 'two' }, 'n', 'invalid_value'],
      [completions(s.url), { prompt: 'hi', max_tokens: 0 }, 'max_tokens', 'invalid_value'],
      [completions(s.url), { prompt: 'hi', stop: 5 }, 'stop', 'invalid_value'],
      [completions(s.url), { prompt: 'hi', logprobs: 50 }, 'logprobs', 'invalid_value'],
      [completions(s.url), { prompt: 'hi', presence_penalty: 3 }, 'presence_penalty', 'invalid_value'],
      [completions(s.url), { prompt: 'hi', min_tokens: 20, max_tokens: 5 }, 'min_tokens', 'invalid_value'],
      [completions(s.url), { prompt: [1, 2, 999] }, 'prompt', 'invalid_value'],
      [completions(s.url), { prompt: [] }, 'prompt', 'invalid_value'],
      [completions(s.url), {}, 'prompt', 'missing_required_parameter'],
      [completions(s.url), { prompt: 'hi', stream_options: { include_usage: true } }, 'stream_options', 'unsupported_feature'],
      [completions(s.url), { prompt: 'hi', suffix: 'x' }, 'suffix', 'unsupported_feature'],
      [chat(s.url), {}, 'messages', 'missing_required_parameter'],
      [chat(s.url), { messages: [{ content: 'hi' }] }, 'messages[0].role', 'invalid_value'],
      [chat(s.url), { messages: msg, logprobs: true, top_logprobs: 21 }, 'top_logprobs', 'invalid_value'],
      [chat(s.url), { messages: msg, top_logprobs: 2 }, 'top_logprobs', 'invalid_value'],
      [chat(s.url), { messages: msg, max_completion_tokens: -5 }, 'max_completion_tokens', 'invalid_value'],
      [chat(s.url), { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }, 'messages[0].content[0].type', 'unsupported_feature'],
      [chat(s.url), { messages: msg, tools: [{ type: 'function', function: { name: 'f' } }] }, 'tools', 'unsupported_feature'],
    ];
    for (const [url, body, param, code] of cases) assertError(await post(url, body), 400, code, param);
    const s2 = await s.engine.stats();
    assert.equal(s2.numRunning + s2.numWaiting, 0, 'nothing was queued');
  });
});

test('400: a prompt longer than the context, or max_tokens past it', async () => {
  await withServer({ engine: { maxModelLen: 64 } }, async (s) => {
    const long = randomPrompt(64, 1);
    const r = await post(completions(s.url), { prompt: long, max_tokens: 1 });
    assertError(r, 400, 'context_length_exceeded', 'prompt');
    assert.match(r.body.error.message, /64 tokens/);
    assertError(await post(completions(s.url), { prompt: randomPrompt(40, 2), max_tokens: 30 }), 400, 'context_length_exceeded', 'max_tokens');
    assertError(await post(chat(s.url), { messages: [{ role: 'user', content: 'word '.repeat(80) }] }), 400, 'context_length_exceeded', 'messages');
    assertError(await post(chat(s.url), { messages: [{ role: 'user', content: 'hi' }], max_completion_tokens: 100 }), 400, 'context_length_exceeded', 'max_completion_tokens');
    assert.equal((await post(completions(s.url), { prompt: randomPrompt(40, 2), max_tokens: 24 })).status, 200);
  });
});

test('401: a missing or wrong API key; /health and /metrics stay open', async () => {
  await withServer({ apiKey: 'sk-right' }, async (s) => {
    assertError(await post(completions(s.url), { prompt: 'hi', max_tokens: 1 }), 401, 'invalid_api_key');
    assertError(await get(`${s.url}/v1/models`, { Authorization: 'Bearer sk-wrong' }), 401, 'invalid_api_key');
    assert.equal((await get(`${s.url}/v1/models`, { Authorization: 'Bearer sk-right' })).status, 200);
    assert.equal((await get(`${s.url}/health`)).status, 200);
    assert.equal((await get(`${s.url}/metrics`)).status, 200);
    const oa = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'sk-wrong', maxRetries: 0 });
    await assert.rejects(oa.models.list(), (e: unknown) => e instanceof OpenAI.AuthenticationError && e.status === 401 && e.code === 'invalid_api_key');
  });
});

test('404: an unknown model or route; 405: a wrong method', async () => {
  await withServer({ servedModelName: 'tiny' }, async (s) => {
    assertError(await post(completions(s.url), { model: 'gpt-4', prompt: 'hi' }), 404, 'model_not_found', 'model');
    assertError(await post(chat(s.url), { model: 'gpt-4', messages: [{ role: 'user', content: 'hi' }] }), 404, 'model_not_found', 'model');
    assertError(await get(`${s.url}/v1/models/gpt-4`), 404, 'model_not_found', 'model');
    assertError(await get(`${s.url}/v1/embeddings`), 404, 'unknown_url');
    assertError(await request(`${s.url}/v1/completions`, 'GET'), 405, 'method_not_allowed');
    const oa = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'x', maxRetries: 0 });
    await assert.rejects(oa.completions.create({ model: 'gpt-4', prompt: 'hi' }), (e: unknown) => e instanceof OpenAI.NotFoundError && e.code === 'model_not_found');
  });
});

/** Sends `body` with or without a Content-Length, and reads the answer. */
function rawPost(url: string, body: string, chunked: boolean): Promise<JsonResponse> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'POST', headers: { 'Content-Type': 'application/json', ...(!chunked && { 'Content-Length': Buffer.byteLength(body) }) } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: new Headers(), body: JSON.parse(text) }));
    });
    req.on('error', reject);
    if (chunked) {
      for (let i = 0; i < body.length; i += 1024) req.write(body.slice(i, i + 1024));
      req.end();
    } else req.end(body);
  });
}

test('413: a body over the cap, declared or chunked', async () => {
  await withServer({ maxBodyBytes: 4096 }, async (s) => {
    const big = JSON.stringify({ prompt: 'x'.repeat(8000) });
    assertError(await rawPost(completions(s.url), big, false), 413, 'request_too_large');
    assertError(await rawPost(completions(s.url), big, true), 413, 'request_too_large');
    assert.equal((await post(completions(s.url), { prompt: 'x', max_tokens: 1 })).status, 200);
  });
});

test('503: the waiting queue is full', async () => {
  await withServer({ engine: { maxNumSeqs: 1, maxWaiting: 1 } }, async (s) => {
    const long = { prompt: 'It was', max_tokens: 400, ignore_eos: true, stream: true };
    const ac = new AbortController();
    const first = await fetch(completions(s.url), { method: 'POST', body: JSON.stringify(long), signal: ac.signal });
    const second = await fetch(completions(s.url), { method: 'POST', body: JSON.stringify(long), signal: ac.signal });
    assert.equal(first.status, 200);
    assert.equal(second.status, 200);
    assertError(await post(completions(s.url), { prompt: 'hi', max_tokens: 1 }), 503, 'queue_full');
    ac.abort();
    await first.body?.cancel().catch(() => {});
    await second.body?.cancel().catch(() => {});
  });
});

test('400: text prompts and chat on a model without a tokenizer; token ids work', async () => {
  await withServer({ modelDir: NO_TOKENIZER }, async (s) => {
    assertError(await post(completions(s.url), { prompt: 'hi' }), 400, 'tokenizer_missing', 'prompt');
    assertError(await post(chat(s.url), { messages: [{ role: 'user', content: 'hi' }] }), 400, 'tokenizer_missing', 'messages');
    const r = await post(completions(s.url), { prompt: [5, 6, 7], max_tokens: 3, logprobs: 0, ignore_eos: true });
    assert.equal(r.status, 200);
    assert.equal(r.body.choices[0].logprobs.tokens.length, 3);
    assert.match(r.body.choices[0].logprobs.tokens[0], /^token_id:\d+$/);
  });
});

test('503 once the engine worker died: in-flight streams end with an error, /health turns unhealthy', async () => {
  await withServer({}, async (s) => {
    const res = await fetch(completions(s.url), { method: 'POST', body: JSON.stringify({ prompt: 'It was', max_tokens: 900, ignore_eos: true, stream: true }) });
    const reader = res.body!.getReader();
    await reader.read(); // the stream is under way
    await s.engine.kill();
    let text = '';
    for (let r = await reader.read(); !r.done; r = await reader.read()) text += new TextDecoder().decode(r.value);
    const events = parseSse(text);
    assert.equal(events.at(-1), '[DONE]');
    assert.equal((events.at(-2) as { error: { code: string } }).error.code, 'engine_dead');

    assertError(await post(completions(s.url), { prompt: 'hi' }), 503, 'engine_dead');
    assertError(await post(chat(s.url), { messages: [{ role: 'user', content: 'hi' }] }), 503, 'engine_dead');
    const health = await get(`${s.url}/health`);
    assertError(health, 503, 'engine_dead');
    assert.match(health.body.error.message, /exited|crashed/);
    const metrics = await get(`${s.url}/metrics`);
    assert.match(metrics.body, /peregrine_engine_healthy\{[^}]*\} 0/);
  });
});
