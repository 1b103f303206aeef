/** The engine's per-token logprobs in the two OpenAI shapes (legacy completions and chat), and vLLM's prompt_logprobs. */
import type { OutputLogprob, TokenLogprob } from '../api/outputs.js';

/** JSON has no -Infinity: a token the model rules out gets this (as vLLM). */
const MIN_LOGPROB = -9999;

export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: Array<number | null>;
  top_logprobs: Array<Record<string, number> | null>;
  text_offset: number[];
}

export interface ChatTokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: Array<{ token: string; logprob: number; bytes: number[] }>;
}

const clamp = (lp: number) => (Number.isFinite(lp) ? lp : MIN_LOGPROB);

/**
 * The token's text, or `token_id:<id>` for a model without a tokenizer or when the client asked
 * for ids (vLLM's `return_tokens_as_token_ids`).
 */
export const tokenText = (t: TokenLogprob, asIds = false) => (asIds ? null : t.token) ?? `token_id:${t.tokenId}`;

export function emptyCompletionLogprobs(): CompletionLogprobs {
  return { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
}

/**
 * Appends `entries` to `out`, offsets continuing from `textOffset`; returns the offset after them.
 * top_logprobs holds the alternatives and the chosen token, as vLLM.
 */
export function appendCompletionLogprobs(out: CompletionLogprobs, entries: readonly OutputLogprob[], textOffset: number, asIds = false): number {
  for (const e of entries) {
    const token = tokenText(e, asIds);
    out.tokens.push(token);
    out.token_logprobs.push(clamp(e.logprob));
    const top: Record<string, number> = {};
    for (const t of e.topLogprobs) top[tokenText(t, asIds)] = clamp(t.logprob);
    top[token] = clamp(e.logprob);
    out.top_logprobs.push(top);
    out.text_offset.push(textOffset);
    textOffset += token.length;
  }
  return textOffset;
}

/**
 * Prompt tokens echoed back: their text and, where `logprobs` has one (prompt logprobs were
 * computed; never for the first token), the logprob and alternatives as for output tokens.
 */
export function appendPromptTokens(
  out: CompletionLogprobs,
  tokens: readonly string[],
  textOffset: number,
  logprobs: ReadonlyArray<OutputLogprob | null> | null = null,
  asIds = false,
): number {
  tokens.forEach((token, i) => {
    const lp = logprobs?.[i] ?? null;
    let top: Record<string, number> | null = null;
    if (lp) {
      top = {};
      for (const t of lp.topLogprobs) top[tokenText(t, asIds)] = clamp(t.logprob);
      top[token] = clamp(lp.logprob);
    }
    out.tokens.push(token);
    out.token_logprobs.push(lp ? clamp(lp.logprob) : null);
    out.top_logprobs.push(top);
    out.text_offset.push(textOffset);
    textOffset += token.length;
  });
  return textOffset;
}

/** One token of vLLM's `prompt_logprobs`; `rank` is the 1-based rank in the distribution. */
export interface PromptTokenLogprob {
  logprob: number;
  rank?: number;
  decoded_token: string;
}

/**
 * vLLM's `prompt_logprobs` of a completion choice: null for the first prompt token, then per
 * position a dict token id -> {logprob, rank, decoded_token} holding the top-n alternatives and
 * the prompt token. The engine keeps only the top n of each distribution, so ranks are exact
 * for those (best first: 1..n) and for a prompt token among them; a prompt token outside the
 * top n has no `rank` key (its rank is > n, and counting it would mean another pass over the
 * vocabulary's logits that the engine does not keep).
 */
export function vllmPromptLogprobs(logprobs: ReadonlyArray<OutputLogprob | null>, asIds = false): Array<Record<string, PromptTokenLogprob> | null> {
  return logprobs.map((lp) => {
    if (!lp) return null;
    const out: Record<string, PromptTokenLogprob> = {};
    lp.topLogprobs.forEach((t, k) => (out[t.tokenId] = { logprob: clamp(t.logprob), rank: k + 1, decoded_token: tokenText(t, asIds) }));
    out[lp.tokenId] ??= { logprob: clamp(lp.logprob), decoded_token: tokenText(lp, asIds) };
    return out;
  });
}

const utf8Bytes = (s: string) => [...Buffer.from(s, 'utf8')];

export function chatLogprobs(entries: readonly OutputLogprob[], asIds = false): ChatTokenLogprob[] {
  return entries.map((e) => {
    const token = tokenText(e, asIds);
    return {
      token,
      logprob: clamp(e.logprob),
      bytes: utf8Bytes(token),
      top_logprobs: e.topLogprobs.map((t) => ({ token: tokenText(t, asIds), logprob: clamp(t.logprob), bytes: utf8Bytes(tokenText(t, asIds)) })),
    };
  });
}
