/**
 * POST /v1/completions (OpenAI's legacy completions): one or many prompts, `n` choices each,
 * indexed promptIndex * n + i; streamed as `text_completion` chunks or answered at once.
 */
import type { ServerResponse } from 'node:http';
import { abortOnDisconnect, checkModel, newId, nowS, sendJson, type Handler, type ServerContext } from '../context.js';
import { Generation } from '../generation.js';
import { appendCompletionLogprobs, appendPromptTokens, emptyCompletionLogprobs, vllmPromptLogprobs, type CompletionLogprobs } from '../logprobs.js';
import { runEventStream } from '../sse.js';
import { parseCompletionRequest, type CompletionRequest } from './completions-request.js';

export const completionsRoute: Handler = async (ctx, _req, res, body) => {
  const arrivalMs = performance.now();
  const request = parseCompletionRequest(ctx, body);
  checkModel(ctx, request.sampling.model);
  const id = newId('cmpl');
  const gen = await Generation.start(ctx.engine, ctx.metrics, {
    requestId: id,
    prompts: request.prompts.map((p) => p.tokenIds),
    params: request.params,
    n: request.sampling.n,
    arrivalMs,
  });
  abortOnDisconnect(res, gen);
  if (request.sampling.stream) await streamCompletion(ctx, res, request, gen, id);
  else await answerCompletion(ctx, res, request, gen, id);
};

/** The echoed prompt's tokens as text, one per token (for logprobs). */
function promptTokenTexts(ctx: ServerContext, request: CompletionRequest, tokenIds: readonly number[]): string[] {
  const tok = request.sampling.tokensAsIds ? null : ctx.tokenizer;
  return tokenIds.map((t) => (tok ? tok.decode([t], { skipSpecialTokens: false }) : `token_id:${t}`));
}

async function answerCompletion(ctx: ServerContext, res: ServerResponse, request: CompletionRequest, gen: Generation, id: string): Promise<void> {
  const results = await gen.collect(request.prompts.length);
  if (res.destroyed) return;
  const n = request.sampling.n;
  const choices = results.map((r, index) => {
    const prompt = request.prompts[Math.floor(index / n)]!;
    let logprobs: CompletionLogprobs | null = null;
    if (request.logprobs !== null) {
      logprobs = emptyCompletionLogprobs();
      const offset = request.echo ? appendPromptTokens(logprobs, promptTokenTexts(ctx, request, prompt.tokenIds), 0, r.promptLogprobs, request.sampling.tokensAsIds) : 0;
      appendCompletionLogprobs(logprobs, r.logprobs ?? [], offset, request.sampling.tokensAsIds);
    }
    return {
      index,
      text: (request.echo ? prompt.text : '') + r.text,
      logprobs,
      finish_reason: r.finishReason,
      stop_reason: r.stopReason,
      ...(request.promptLogprobs !== null && { prompt_logprobs: r.promptLogprobs && vllmPromptLogprobs(r.promptLogprobs, request.sampling.tokensAsIds) }),
    };
  });
  const completionTokens = results.reduce((a, r) => a + r.tokenIds.length, 0);
  sendJson(res, 200, {
    id,
    object: 'text_completion',
    created: nowS(),
    model: ctx.servedModelName,
    choices,
    usage: { prompt_tokens: gen.numPromptTokens, completion_tokens: completionTokens, total_tokens: gen.numPromptTokens + completionTokens },
  });
}

async function streamCompletion(ctx: ServerContext, res: ServerResponse, request: CompletionRequest, gen: Generation, id: string): Promise<void> {
  const created = nowS();
  const n = request.sampling.n;
  const numChoices = request.prompts.length * n;
  const started = new Array<boolean>(numChoices).fill(false);
  const textOffsets = new Array<number>(numChoices).fill(0);
  const usageField = request.sampling.includeUsage ? { usage: null } : {};
  let completionTokens = 0;
  await runEventStream(res, async (sse) => {
    for await (const { choiceIndex, promptIndex, delta } of gen.deltas) {
      completionTokens += delta.tokenIds.length;
      let text = delta.text;
      let logprobs: CompletionLogprobs | null = null;
      if (request.logprobs !== null) logprobs = emptyCompletionLogprobs();
      if (!started[choiceIndex]) {
        started[choiceIndex] = true;
        const prompt = request.prompts[promptIndex]!;
        if (request.echo) {
          text = prompt.text + text;
          if (logprobs) textOffsets[choiceIndex] = appendPromptTokens(logprobs, promptTokenTexts(ctx, request, prompt.tokenIds), 0, delta.promptLogprobs ?? null, request.sampling.tokensAsIds);
          else textOffsets[choiceIndex] = prompt.text.length;
        }
      }
      if (logprobs) textOffsets[choiceIndex] = appendCompletionLogprobs(logprobs, delta.logprobs ?? [], textOffsets[choiceIndex]!, request.sampling.tokensAsIds);
      // like vLLM: a chunk per step that produced tokens, even while stop-string holdback keeps its text empty
      if (text === '' && delta.tokenIds.length === 0 && !delta.finished && !(logprobs && logprobs.tokens.length > 0)) continue;
      await sse.send({
        id,
        object: 'text_completion',
        created,
        model: ctx.servedModelName,
        choices: [{
          index: choiceIndex,
          text,
          logprobs,
          finish_reason: delta.finished ? delta.finishReason : null,
          stop_reason: delta.finished ? delta.stopReason : null,
        }],
        ...usageField,
      });
    }
    if (request.sampling.includeUsage && !sse.isClosed) {
      await sse.send({
        id,
        object: 'text_completion',
        created,
        model: ctx.servedModelName,
        choices: [],
        usage: { prompt_tokens: gen.numPromptTokens, completion_tokens: completionTokens, total_tokens: gen.numPromptTokens + completionTokens },
      });
    }
  });
}
