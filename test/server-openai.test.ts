// The server through the official `openai` npm client: completions and chat, streamed and not,
// n, stop, logprobs, echo, usage, token-id prompts and the vLLM extensions.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { Tokenizer } from '../src/tokenizer/tokenizer.js';
import { LLAMA, withServer } from './server-harness.js';

const MODEL = 'tiny-llama';
const client = (url: string) => new OpenAI({ baseURL: `${url}/v1`, apiKey: 'sk-test', maxRetries: 0 });
/** the vLLM extensions are not in the client's types */
const ext = <T>(body: T & Record<string, unknown>) => body as T;

test('models.list names the served model', async () => {
  await withServer({ servedModelName: MODEL }, async (s) => {
    const models = await client(s.url).models.list();
    assert.deepEqual(models.data.map((m) => m.id), [MODEL]);
    assert.equal((await client(s.url).models.retrieve(MODEL)).id, MODEL);
  });
});

test('completions: streamed text equals the whole answer; usage counts the tokenizer\'s tokens', async () => {
  await withServer({ servedModelName: MODEL }, async (s) => {
    const oa = client(s.url);
    const prompt = 'Four score and seven years ago';
    const whole = await oa.completions.create({ model: MODEL, prompt, max_tokens: 12, temperature: 0 });
    assert.equal(whole.object, 'text_completion');
    assert.equal(whole.choices.length, 1);
    const tok = await Tokenizer.load(LLAMA);
    assert.equal(whole.usage!.prompt_tokens, tok.encode(prompt).length);
    assert.equal(whole.usage!.total_tokens, whole.usage!.prompt_tokens + whole.usage!.completion_tokens);
    assert.ok(['length', 'stop'].includes(whole.choices[0]!.finish_reason));

    let text = '';
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | undefined;
    const stream = await oa.completions.create({ model: MODEL, prompt, max_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true } });
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      for (const c of chunk.choices) {
        text += c.text;
        finish = c.finish_reason ?? finish;
      }
    }
    assert.equal(text, whole.choices[0]!.text);
    assert.equal(finish, whole.choices[0]!.finish_reason);
    assert.deepEqual(usage, whole.usage);
  });
});

test('chat: streamed content equals the whole answer; text parts equal a string content', async () => {
  await withServer({ servedModelName: MODEL }, async (s) => {
    const oa = client(s.url);
    const messages = [{ role: 'user' as const, content: 'Who wrote the address at Gettysburg?' }];
    const whole = await oa.chat.completions.create({ model: MODEL, messages, max_completion_tokens: 10, temperature: 0 });
    assert.equal(whole.object, 'chat.completion');
    assert.equal(whole.choices[0]!.message.role, 'assistant');
    assert.ok(whole.usage!.completion_tokens <= 10 && whole.usage!.completion_tokens > 0);

    const parts = await oa.chat.completions.create({
      model: MODEL, max_tokens: 10, temperature: 0,
      messages: [{ role: 'user', content: [{ type: 'text', text: 'Who wrote the address at Gettysburg?' }] }],
    });
    assert.equal(parts.choices[0]!.message.content, whole.choices[0]!.message.content);

    let content = '';
    let role: string | undefined;
    let usage: OpenAI.CompletionUsage | undefined;
    const stream = await oa.chat.completions.create({ model: MODEL, messages, max_completion_tokens: 10, temperature: 0, stream: true, stream_options: { include_usage: true } });
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      for (const c of chunk.choices) {
        role ??= c.delta.role;
        content += c.delta.content ?? '';
      }
    }
    assert.equal(role, 'assistant');
    assert.equal(content, whole.choices[0]!.message.content);
    assert.deepEqual(usage, whole.usage);
  });
});

test('n choices with a seed are reproducible; n streams are indexed', async () => {
  await withServer({}, async (s) => {
    const oa = client(s.url);
    const body = { model: '', prompt: 'It was the best of times', max_tokens: 8, n: 3, seed: 7, temperature: 1 };
    const a = await oa.completions.create(body);
    const b = await oa.completions.create(body);
    assert.deepEqual(a.choices.map((c) => c.index), [0, 1, 2]);
    assert.deepEqual(a.choices.map((c) => c.text), b.choices.map((c) => c.text));
    assert.ok(a.usage!.completion_tokens >= 3 && a.usage!.completion_tokens <= 3 * 8);

    const texts = ['', '', ''];
    for await (const chunk of await oa.completions.create({ ...body, stream: true })) {
      for (const c of chunk.choices) texts[c.index] += c.text;
    }
    assert.deepEqual(texts, a.choices.map((c) => c.text));
  });
});

test('stop strings and stop_token_ids end the completion with finish_reason stop', async () => {
  await withServer({}, async (s) => {
    const oa = client(s.url);
    const prompt = 'It was the age of wisdom';
    const base = await oa.completions.create(ext({ model: '', prompt, max_tokens: 16, temperature: 0, ignore_eos: true, logprobs: 0, return_tokens_as_token_ids: true }));
    const text = base.choices[0]!.text;
    const ids = base.choices[0]!.logprobs!.tokens!.map((t) => Number(t.slice('token_id:'.length)));
    assert.equal(ids.length, 16);

    const stop = text.slice(3, 5);
    assert.ok(stop.length === 2 && !text.slice(0, 4).includes(stop), `stop string ${JSON.stringify(stop)} of ${JSON.stringify(text)}`);
    const cut = await oa.completions.create(ext({ model: '', prompt, max_tokens: 16, temperature: 0, ignore_eos: true, stop: [stop] }));
    assert.equal(cut.choices[0]!.text, text.slice(0, text.indexOf(stop)));
    assert.equal(cut.choices[0]!.finish_reason, 'stop');
    assert.equal((cut.choices[0] as unknown as { stop_reason: string }).stop_reason, stop);

    const k = ids.findIndex((id, i) => ids.indexOf(id) === i && i >= 2);
    const byId = await oa.completions.create(ext({ model: '', prompt, max_tokens: 16, temperature: 0, ignore_eos: true, stop_token_ids: [ids[k]!] }));
    assert.equal(byId.usage!.completion_tokens, k + 1);
    assert.equal(byId.choices[0]!.finish_reason, 'stop');
    assert.equal((byId.choices[0] as unknown as { stop_reason: number }).stop_reason, ids[k]);
  });
});

test('logprobs, echo and top_logprobs in both shapes', async () => {
  await withServer({}, async (s) => {
    const oa = client(s.url);
    const prompt = 'Now we are engaged';
    // token ids as keys: distinct tokens with the same text (partial UTF-8 bytes) stay apart
    const c = await oa.completions.create(ext({ model: '', prompt, max_tokens: 6, temperature: 0, logprobs: 3, echo: true, return_tokens_as_token_ids: true }));
    const lp = c.choices[0]!.logprobs!;
    assert.ok(c.choices[0]!.text.startsWith(prompt));
    const numPrompt = c.usage!.prompt_tokens;
    assert.equal(lp.tokens!.length, numPrompt + c.usage!.completion_tokens);
    // prompt logprobs: none for the first token (nothing precedes it), computed for the rest
    assert.equal(lp.token_logprobs![0], null);
    for (let i = 1; i < numPrompt; i++) assert.ok(lp.token_logprobs![i]! <= 0, `prompt token ${i}`);
    for (let i = numPrompt; i < lp.tokens!.length; i++) {
      const top = lp.top_logprobs![i]!;
      assert.ok(Object.keys(top).length >= 3 && Object.keys(top).length <= 4, 'top 3 and the chosen token');
      assert.equal(top[lp.tokens![i]!], lp.token_logprobs![i]);
      assert.ok(lp.token_logprobs![i]! <= 0);
      assert.equal(lp.text_offset![i], lp.text_offset![i - 1]! + lp.tokens![i - 1]!.length);
    }

    const chat = await oa.chat.completions.create({ model: '', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 5, temperature: 0, logprobs: true, top_logprobs: 2 });
    const content = chat.choices[0]!.logprobs!.content!;
    assert.equal(content.length, chat.usage!.completion_tokens);
    for (const t of content) {
      assert.equal(t.top_logprobs.length, 2);
      assert.deepEqual(t.bytes, [...Buffer.from(t.token, 'utf8')]);
      assert.ok(t.top_logprobs[0]!.logprob >= t.top_logprobs[1]!.logprob);
      assert.equal(t.top_logprobs[0]!.logprob, t.logprob, 'greedy picks the most likely token');
    }
  });
});

test('a list of prompts (text or token ids) gives n choices per prompt, in order', async () => {
  await withServer({}, async (s) => {
    const oa = client(s.url);
    const tok = await Tokenizer.load(LLAMA);
    const prompts = ['It was the best of times', 'Four score'];
    const one = await Promise.all(prompts.map((prompt) => oa.completions.create({ model: '', prompt, max_tokens: 5, temperature: 0 })));
    const many = await oa.completions.create({ model: '', prompt: prompts, max_tokens: 5, temperature: 0, n: 2 });
    assert.deepEqual(many.choices.map((c) => c.index), [0, 1, 2, 3]);
    assert.deepEqual(many.choices.map((c) => c.text), [0, 0, 1, 1].map((i) => one[i]!.choices[0]!.text));
    assert.equal(many.usage!.prompt_tokens, one[0]!.usage!.prompt_tokens + one[1]!.usage!.prompt_tokens);

    const ids = await oa.completions.create({ model: '', prompt: prompts.map((p) => tok.encode(p)), max_tokens: 5, temperature: 0 });
    assert.deepEqual(ids.choices.map((c) => c.text), one.map((o) => o.choices[0]!.text));
    const single = await oa.completions.create({ model: '', prompt: tok.encode(prompts[1]!), max_tokens: 5, temperature: 0 });
    assert.equal(single.choices[0]!.text, one[1]!.choices[0]!.text);
  });
});

test('top_k 1 at temperature 1 is greedy; min_tokens holds off the stop', async () => {
  await withServer({}, async (s) => {
    const oa = client(s.url);
    const prompt = 'We have come to dedicate';
    const greedy = await oa.completions.create({ model: '', prompt, max_tokens: 8, temperature: 0 });
    const topK = await oa.completions.create(ext({ model: '', prompt, max_tokens: 8, temperature: 1, top_k: 1, seed: 3 }));
    assert.equal(topK.choices[0]!.text, greedy.choices[0]!.text);
    const withPenalty = await oa.completions.create(ext({ model: '', prompt, max_tokens: 8, temperature: 0, repetition_penalty: 1.3, min_p: 0.1, presence_penalty: 0.5, frequency_penalty: 0.5 }));
    assert.equal(withPenalty.choices.length, 1);
    const minTokens = await oa.completions.create(ext({ model: '', prompt, max_tokens: 8, temperature: 0, min_tokens: 8, ignore_eos: false }));
    assert.equal(minTokens.usage!.completion_tokens, 8);
  });
});
