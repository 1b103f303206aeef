/**
 * Incremental detokenization for streaming, after vLLM's detokenize_incrementally: decode a short
 * window of ids ending at the new token, and emit what it adds to the same window without the new
 * token. Decoding a window (not the lone token) keeps sentencepiece's leading spaces and merges
 * byte-fallback / byte-level pieces; holding back text that ends in U+FFFD never emits half a
 * UTF-8 character.
 *
 * The window starts inside the prompt, so the first generated token keeps its leading space where
 * it continues the prompt (" Paris" after "The capital of France is"). For byte-level tokenizers
 * (GPT-2, Llama 3, Qwen) `text` then equals `tok.decode(outputIds)`; for sentencepiece ones it is
 * `decode(prompt ++ output)` past `decode(prompt)`, which may start with a space that
 * `decode(outputIds)` strips.
 */
import type { Tokenizer } from './tokenizer.js';

/** Prompt tokens decoded as context before the first generated token (vLLM uses 5 as well). */
const PROMPT_CONTEXT_TOKENS = 5;
const REPLACEMENT_CHAR = '\uFFFD';

export class IncrementalDetokenizer {
  private readonly tok: Tokenizer;
  private readonly skipSpecialTokens: boolean;
  /** the last PROMPT_CONTEXT_TOKENS prompt ids, then every generated id */
  private readonly ids: number[];
  /** ids[prefixOffset, readOffset) is the context already emitted; ids[readOffset..] is not emitted yet */
  private prefixOffset = 0;
  private readOffset: number;
  private output = '';

  /**
   * @param promptTokenIds the prompt (only its last few ids are kept, as decoding context)
   * @param opts.skipSpecialTokens drop special tokens from the text (default true, as vLLM's SamplingParams)
   */
  constructor(tok: Tokenizer, promptTokenIds: ArrayLike<number>, opts: { skipSpecialTokens?: boolean } = {}) {
    this.tok = tok;
    this.skipSpecialTokens = opts.skipSpecialTokens ?? true;
    const contextStart = Math.max(promptTokenIds.length - PROMPT_CONTEXT_TOKENS, 0);
    this.ids = Array.from({ length: promptTokenIds.length - contextStart }, (_, i) => promptTokenIds[contextStart + i]);
    this.readOffset = this.ids.length;
  }

  /** The text emitted so far (the concatenation of every delta). */
  get text(): string {
    return this.output;
  }

  /** Append one generated token; returns the new text, '' while a character or a merge is incomplete. */
  push(tokenId: number): string {
    this.ids.push(tokenId);
    return this.emit(false);
  }

  /**
   * Emit whatever is still held back, incomplete UTF-8 included (as U+FFFD), e.g. when generation
   * stops in the middle of a character. After it, `text` equals the tokenizer's decode.
   */
  flush(): string {
    return this.emit(true);
  }

  private emit(force: boolean): string {
    const decode = (ids: number[]): string => this.tok.decode(ids, { skipSpecialTokens: this.skipSpecialTokens });
    const prefixText = decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const fullText = decode(this.ids.slice(this.prefixOffset));
    if (fullText.length <= prefixText.length || (!force && fullText.endsWith(REPLACEMENT_CHAR))) return '';
    const delta = fullText.slice(prefixText.length);
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    this.output += delta;
    return delta;
  }
}
