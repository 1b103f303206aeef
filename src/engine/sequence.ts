/**
 * One sequence being generated: its tokens (prompt + outputs), where it stands in the
 * scheduler, its KV blocks and its sampling state. One request with n > 1 is n sequences.
 *
 * Async scheduling: a token being sampled by a launched step is a placeholder at the end of
 * tokenIds (at most two: the steps in flight) until its step is collected; outputTokenIds
 * holds only real tokens.
 */
import { placeholderToken } from './executor.js';
import { createSamplingState, type SequenceSamplingState } from '../sampling/sampler.js';
import type { SamplingParams } from '../sampling/params.js';
import { PeregrineError } from '../errors.js';

export type SequenceStatus = 'waiting' | 'running' | 'finished';

export interface SequenceInit {
  requestId: string;
  promptTokenIds: readonly number[];
  params: SamplingParams;
  /** added to params.seed for this sequence's Rng (the n-th choice of a request uses n) */
  seedOffset?: number;
  /** masked while fewer than params.minTokens outputs exist */
  eosTokenIds?: readonly number[];
  /** ms, performance.now() clock */
  arrivalTime?: number;
}

let nextSeqId = 0;

export class Sequence {
  readonly seqId: number;
  readonly requestId: string;
  /** prompt then outputs, then placeholders of tokens still being sampled */
  readonly tokenIds: number[];
  readonly promptTokenIds: readonly number[];
  /** append-only; the sampling state reads it for penalties */
  readonly outputTokenIds: number[] = [];
  readonly numPromptTokens: number;
  status: SequenceStatus = 'waiting';
  /** tokens at the start of tokenIds whose KV is in the cache */
  numCachedTokens = 0;
  blockTable: number[] = [];
  /** prompt tokens found in the prefix cache at the first admission */
  numCachedPromptTokens = 0;
  numPreemptions = 0;
  /** placeholders at the end of tokenIds (tokens launched steps are sampling) */
  numPendingTokens = 0;
  readonly params: SamplingParams;
  readonly samplingState: SequenceSamplingState;
  readonly arrivalTime: number;

  constructor(init: SequenceInit) {
    this.seqId = nextSeqId++;
    this.requestId = init.requestId;
    this.promptTokenIds = [...init.promptTokenIds];
    this.tokenIds = [...init.promptTokenIds];
    this.numPromptTokens = init.promptTokenIds.length;
    this.params = init.params;
    this.samplingState = createSamplingState(init.params, this.promptTokenIds, this.outputTokenIds, init.seedOffset ?? 0, init.eosTokenIds ?? []);
    this.arrivalTime = init.arrivalTime ?? performance.now();
  }

  get numTokens(): number {
    return this.tokenIds.length;
  }

  get numOutputTokens(): number {
    return this.outputTokenIds.length;
  }

  get lastTokenId(): number {
    return this.tokenIds[this.tokenIds.length - 1];
  }

  numBlocksNeeded(blockSize: number): number {
    return Math.ceil(this.tokenIds.length / blockSize);
  }

  appendToken(tokenId: number): void {
    if (this.numPendingTokens > 0) throw new PeregrineError('PGN_ERR_INTERNAL', `request ${this.requestId}: a token appended while ${this.numPendingTokens} are pending`);
    this.tokenIds.push(tokenId);
    this.outputTokenIds.push(tokenId);
  }

  /** Async scheduling: the token a launched step samples in row `row`, not known yet. */
  appendPlaceholder(row: number): void {
    this.tokenIds.push(placeholderToken(row));
    this.numPendingTokens++;
  }

  /** Replaces the oldest placeholder with the token its step sampled. */
  fillPlaceholder(tokenId: number): void {
    if (this.numPendingTokens === 0) throw new PeregrineError('PGN_ERR_INTERNAL', `request ${this.requestId}: no placeholder to fill`);
    this.tokenIds[this.tokenIds.length - this.numPendingTokens] = tokenId;
    this.numPendingTokens--;
    this.outputTokenIds.push(tokenId);
  }
}
