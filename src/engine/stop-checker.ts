/**
 * Stop conditions of one sequence (vLLM's), checked once per new token, in this order:
 * 1. eos (unless ignoreEos) or a stop token id -> 'stop'; the token's text is dropped
 *    unless includeStopStrInOutput;
 * 2. a stop string completed by the new text, also across token boundaries -> 'stop';
 *    the text is cut before the match (after it with includeStopStrInOutput);
 * 3. maxTokens outputs, or promptLen + outputs >= maxModelLen -> 'length'.
 * 1 and 2 apply only once `minTokens` outputs exist. While streaming, the longest tail of
 * the text that could still begin a stop string is held back and released once the
 * match fails; when a sequence finishes, everything still held is emitted (or cut).
 */
import type { SamplingParams } from '../sampling/params.js';

export type FinishReason = 'stop' | 'length' | 'abort';

export interface StopDecision {
  finished: boolean;
  reason: FinishReason | null;
  /** the stop string or token id that matched */
  stopReason: string | number | null;
  /** text safe to emit now */
  emitText: string;
}

interface StopMatch {
  stop: string;
  start: number;
  end: number;
}

export class StopChecker {
  private readonly stops: readonly string[];
  private readonly stopTokenIds: ReadonlySet<number>;
  private readonly eosTokenIds: ReadonlySet<number>;
  /** text received but not yet emitted */
  private pending = '';
  /** include mode holds nothing back: the last (longest stop - 1) chars already emitted, to match across */
  private emittedTail = '';
  private readonly maxTailLen: number;
  private finishedAs: StopDecision | null = null;

  constructor(
    private readonly params: SamplingParams,
    eosTokenIds: readonly number[],
    private readonly maxModelLen: number,
    private readonly promptLen: number,
  ) {
    this.stops = params.stop.filter((s) => s.length > 0);
    this.stopTokenIds = new Set(params.stopTokenIds);
    this.eosTokenIds = new Set(params.ignoreEos ? [] : eosTokenIds);
    this.maxTailLen = Math.max(0, ...this.stops.map((s) => s.length - 1));
  }

  get finished(): boolean {
    return this.finishedAs !== null;
  }

  /**
   * Feed the newest token and its newly detokenized text.
   * @param numOutputTokens outputs so far, this token included
   */
  onToken(tokenId: number, textDelta: string, numOutputTokens: number): StopDecision {
    if (this.finishedAs) return { ...this.finishedAs, emitText: '' };
    const p = this.params;
    const canStop = numOutputTokens >= p.minTokens;

    if (canStop && (this.eosTokenIds.has(tokenId) || this.stopTokenIds.has(tokenId))) {
      return this.finish('stop', tokenId, this.takePending() + (p.includeStopStrInOutput ? textDelta : ''));
    }

    this.pending += textDelta;
    if (canStop && this.stops.length > 0) {
      const buf = this.emittedTail + this.pending;
      const match = findStop(buf, buf.length - textDelta.length, this.stops);
      if (match) {
        const cut = p.includeStopStrInOutput ? match.end : match.start;
        this.pending = '';
        return this.finish('stop', match.stop, buf.slice(this.emittedTail.length, cut));
      }
    }

    if (numOutputTokens >= p.maxTokens || this.promptLen + numOutputTokens >= this.maxModelLen) {
      return this.finish('length', null, this.takePending());
    }
    return { finished: false, reason: null, stopReason: null, emitText: this.release() };
  }

  /** The final text remainder to flush when finishing for another reason (abort, ...). */
  flush(): string {
    return this.takePending();
  }

  private finish(reason: FinishReason, stopReason: string | number | null, emitText: string): StopDecision {
    this.finishedAs = { finished: true, reason, stopReason, emitText: '' };
    return { finished: true, reason, stopReason, emitText };
  }

  private takePending(): string {
    const text = this.pending;
    this.pending = '';
    return text;
  }

  /** Emit what can no longer become part of a stop string; keep the rest pending. */
  private release(): string {
    if (this.params.includeStopStrInOutput) {
      const text = this.takePending();
      if (this.maxTailLen > 0) this.emittedTail = (this.emittedTail + text).slice(-this.maxTailLen);
      return text;
    }
    const hold = longestStopPrefixSuffix(this.pending, this.stops);
    const text = this.pending.slice(0, this.pending.length - hold);
    this.pending = this.pending.slice(this.pending.length - hold);
    return text;
  }
}

/**
 * The stop string completed earliest in `buf` among matches ending after `newFrom`
 * (matches wholly before it were checked on earlier tokens); at equal ends the longest.
 */
function findStop(buf: string, newFrom: number, stops: readonly string[]): StopMatch | null {
  let best: StopMatch | null = null;
  for (const stop of stops) {
    const start = buf.indexOf(stop, Math.max(0, newFrom - stop.length + 1));
    if (start < 0) continue;
    const end = start + stop.length;
    if (!best || end < best.end || (end === best.end && start < best.start)) best = { stop, start, end };
  }
  return best;
}

/** Length of the longest suffix of `text` that is a proper prefix of some stop string. */
function longestStopPrefixSuffix(text: string, stops: readonly string[]): number {
  let best = 0;
  for (const stop of stops) {
    for (let k = Math.min(stop.length - 1, text.length); k > best; k--) {
      if (text.endsWith(stop.slice(0, k))) {
        best = k;
        break;
      }
    }
  }
  return best;
}
