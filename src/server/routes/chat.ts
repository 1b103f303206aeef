/**
 * POST /v1/chat/completions: the model's chat template over the messages, `n` choices;
 * streamed as `chat.completion.chunk` events (a role delta first, then content deltas,
 * finish_reason on the last) or answered as one `chat.completion`.
 */
import type { ServerResponse } from 'node:http';
import { abortOnDisconnect, checkModel, newId, nowS, sendJson, type Handler, type ServerContext } from '../context.js';
import { Generation } from '../generation.js';
import { chatLogprobs } from '../logprobs.js';
import { runEventStream } from '../sse.js';
import { parseChatRequest, type ChatRequest } from './chat-request.js';

export const chatRoute: Handler = async (ctx, _req, res, body) => {
  const arrivalMs = performance.now();
  const request = parseChatRequest(ctx, body);
  checkModel(ctx, request.sampling.model);
  const id = newId('chatcmpl');
  const gen = await Generation.start(ctx.engine, ctx.metrics, {
    requestId: id,
    prompts: [request.promptTokenIds],
    params: request.params,
    n: request.sampling.n,
    arrivalMs,
  });
  abortOnDisconnect(res, gen);
  if (request.sampling.stream) await streamChat(ctx, res, request, gen, id);
  else await answerChat(ctx, res, request, gen, id);
};

function usage(gen: Generation, completionTokens: number) {
  return { prompt_tokens: gen.numPromptTokens, completion_tokens: completionTokens, total_tokens: gen.numPromptTokens + completionTokens };
}

async function answerChat(ctx: ServerContext, res: ServerResponse, request: ChatRequest, gen: Generation, id: string): Promise<void> {
  const results = await gen.collect(1);
  if (res.destroyed) return;
  sendJson(res, 200, {
    id,
    object: 'chat.completion',
    created: nowS(),
    model: ctx.servedModelName,
    choices: results.map((r, index) => ({
      index,
      message: { role: 'assistant', content: r.text },
      logprobs: request.logprobs === null ? null : { content: chatLogprobs(r.logprobs ?? [], request.sampling.tokensAsIds) },
      finish_reason: r.finishReason,
      stop_reason: r.stopReason,
    })),
    usage: usage(gen, results.reduce((a, r) => a + r.tokenIds.length, 0)),
  });
}

async function streamChat(ctx: ServerContext, res: ServerResponse, request: ChatRequest, gen: Generation, id: string): Promise<void> {
  const created = nowS();
  const usageField = request.sampling.includeUsage ? { usage: null } : {};
  const chunk = (choices: unknown[], extra: object = usageField) => ({
    id, object: 'chat.completion.chunk', created, model: ctx.servedModelName, choices, ...extra,
  });
  let completionTokens = 0;
  await runEventStream(res, async (sse) => {
    for (let index = 0; index < request.sampling.n; index++) {
      await sse.send(chunk([{ index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]));
    }
    for await (const { choiceIndex, delta } of gen.deltas) {
      completionTokens += delta.tokenIds.length;
      const logprobs = request.logprobs === null ? null : { content: chatLogprobs(delta.logprobs ?? [], request.sampling.tokensAsIds) };
      if (delta.text === '' && !delta.finished && !(logprobs && logprobs.content.length > 0)) continue;
      await sse.send(chunk([{
        index: choiceIndex,
        delta: delta.text === '' && delta.finished ? {} : { content: delta.text },
        logprobs,
        finish_reason: delta.finished ? delta.finishReason : null,
        stop_reason: delta.finished ? delta.stopReason : null,
      }]));
    }
    if (request.sampling.includeUsage && !sse.isClosed) await sse.send(chunk([], { usage: usage(gen, completionTokens) }));
  });
}
