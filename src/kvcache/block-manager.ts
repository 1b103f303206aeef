/**
 * Paged KV-cache bookkeeping: block ids, reference counts and prefix hashes; no device
 * memory. Every block is in exactly one state:
 *   free   - ref 0, no content worth keeping;
 *   cached - ref 0, holds a full computed block registered under its prefix hash, kept in
 *            an LRU and evicted (oldest first) when free blocks run out;
 *   used   - ref > 0, in the block table of at least one sequence.
 * Only full blocks whose KV has been computed are hashed and registered (cacheFullBlocks),
 * so a sequence admitted later never skips tokens another one is still computing; with async
 * scheduling, only blocks whose tokens are all known (no placeholder) are.
 */
import { PeregrineError } from '../errors.js';
import { hashBlockTokens, ROOT_BLOCK_HASH } from './prefix-hash.js';

export const DEFAULT_BLOCK_SIZE = 16;

/** What the block manager reads and writes on a sequence (engine/Sequence has it). */
export interface BlockSequence {
  readonly tokenIds: readonly number[];
  readonly numTokens: number;
  /** tokens at the start of tokenIds whose KV is in the cache */
  numCachedTokens: number;
  blockTable: number[];
  /** async scheduling: placeholders at the end of tokenIds (tokens not sampled yet; default 0) */
  readonly numPendingTokens?: number;
}

export interface BlockManagerOptions {
  /** share full blocks between sequences by content hash (default true) */
  enablePrefixCaching?: boolean;
}

export class BlockManager {
  readonly numBlocks: number;
  readonly blockSize: number;
  readonly enablePrefixCaching: boolean;

  private readonly refCounts: Int32Array;
  /** chain hash of a full computed block; null while not full or not computed */
  private readonly hashes: Array<string | null>;
  /** the block's tokens, kept for registered blocks so a hash hit can compare them */
  private readonly blockTokens: Array<number[] | null>;
  private readonly freeBlockIds: number[] = [];
  /** cached blocks in LRU order: the first one is evicted first */
  private readonly cachedBlockIds = new Set<number>();
  private readonly hashToBlockId = new Map<string, number>();
  private numQueriedTokens = 0;
  private numHitTokens = 0;

  constructor(numBlocks: number, blockSize: number = DEFAULT_BLOCK_SIZE, options: BlockManagerOptions = {}) {
    if (!Number.isInteger(numBlocks) || numBlocks < 1) {
      throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `numBlocks must be a positive integer, got ${numBlocks}`, { numBlocks });
    }
    if (!Number.isInteger(blockSize) || blockSize < 1) {
      throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `blockSize must be a positive integer, got ${blockSize}`, { blockSize });
    }
    this.numBlocks = numBlocks;
    this.blockSize = blockSize;
    this.enablePrefixCaching = options.enablePrefixCaching ?? true;
    this.refCounts = new Int32Array(numBlocks);
    this.hashes = new Array<string | null>(numBlocks).fill(null);
    this.blockTokens = new Array<number[] | null>(numBlocks).fill(null);
    // popped from the end: blocks 0, 1, 2, ... come out first
    for (let id = numBlocks - 1; id >= 0; id--) this.freeBlockIds.push(id);
  }

  get numFreeBlocks(): number {
    return this.freeBlockIds.length;
  }

  get numCachedBlocks(): number {
    return this.cachedBlockIds.size;
  }

  get numUsedBlocks(): number {
    return this.numBlocks - this.freeBlockIds.length - this.cachedBlockIds.size;
  }

  /** Blocks a new allocation can take: free ones plus evictable cached ones. */
  get numAvailableBlocks(): number {
    return this.freeBlockIds.length + this.cachedBlockIds.size;
  }

  /** Prompt tokens found in the prefix cache / prompt tokens looked up, over all admissions (0 before any). */
  get prefixHitRate(): number {
    return this.numQueriedTokens === 0 ? 0 : this.numHitTokens / this.numQueriedTokens;
  }

  /**
   * Whether `seq` (with an empty block table) can get blocks for all its tokens now.
   * @param reusePrefix take cached prefix blocks (default true; false recomputes the whole prompt)
   */
  canAllocate(seq: BlockSequence, reusePrefix = true): boolean {
    const hits = reusePrefix ? this.findCachedPrefix(seq) : [];
    let numHitsInLru = 0;
    for (const id of hits) if (this.refCounts[id] === 0) numHitsInLru++;
    const numNewBlocks = this.numBlocksFor(seq.numTokens) - hits.length;
    return numNewBlocks <= this.numAvailableBlocks - numHitsInLru;
  }

  /**
   * Gives `seq` blocks for all its tokens, reusing cached full blocks of its prefix, and
   * sets seq.numCachedTokens to the reused length (never all tokens: the last one must be
   * computed to get logits). Call canAllocate first (with the same `reusePrefix`).
   */
  allocate(seq: BlockSequence, reusePrefix = true): void {
    if (seq.blockTable.length !== 0) {
      throw new PeregrineError('PGN_ERR_INTERNAL', 'allocate: sequence already holds blocks', { blockTable: seq.blockTable });
    }
    const hits = reusePrefix ? this.findCachedPrefix(seq) : [];
    for (const id of hits) {
      if (this.refCounts[id] === 0) this.cachedBlockIds.delete(id);
      this.refCounts[id]++;
      seq.blockTable.push(id);
    }
    const numBlocks = this.numBlocksFor(seq.numTokens);
    while (seq.blockTable.length < numBlocks) seq.blockTable.push(this.takeBlock());
    seq.numCachedTokens = hits.length * this.blockSize;
    this.numQueriedTokens += seq.numTokens;
    this.numHitTokens += seq.numCachedTokens;
  }

  /** Whether `seq` can get the blocks its latest tokens need (at most one after a decode step). */
  canAppend(seq: BlockSequence): boolean {
    return this.numBlocksFor(seq.numTokens) - seq.blockTable.length <= this.numAvailableBlocks;
  }

  /** Grows seq.blockTable to cover all its tokens. Call canAppend first. */
  appendSlot(seq: BlockSequence): void {
    const numBlocks = this.numBlocksFor(seq.numTokens);
    while (seq.blockTable.length < numBlocks) seq.blockTable.push(this.takeBlock());
  }

  /**
   * Hashes and registers the blocks of `seq` that are full, computed (below
   * seq.numCachedTokens), of known tokens (before any placeholder) and not hashed yet. Call after
   * numCachedTokens advances or a placeholder is filled.
   */
  cacheFullBlocks(seq: BlockSequence): void {
    if (!this.enablePrefixCaching) return;
    const numKnown = Math.min(seq.numCachedTokens, seq.numTokens - (seq.numPendingTokens ?? 0));
    const numFull = Math.min(Math.floor(numKnown / this.blockSize), seq.blockTable.length);
    // hashed blocks form a prefix of the table: walk back to the last hashed one
    let first = numFull;
    while (first > 0 && this.hashes[seq.blockTable[first - 1]] === null) first--;
    let prevHash = first === 0 ? ROOT_BLOCK_HASH : (this.hashes[seq.blockTable[first - 1]] as string);
    for (let i = first; i < numFull; i++) {
      const id = seq.blockTable[i];
      const start = i * this.blockSize;
      const hash = hashBlockTokens(prevHash, seq.tokenIds, start, start + this.blockSize);
      this.hashes[id] = hash;
      // an equal block computed by another sequence at the same time keeps the entry
      if (!this.hashToBlockId.has(hash)) {
        this.hashToBlockId.set(hash, id);
        this.blockTokens[id] = seq.tokenIds.slice(start, start + this.blockSize);
      }
      prevHash = hash;
    }
  }

  /** Releases the blocks of `seq` (tail first, so tail blocks are evicted first) and resets its cache state. */
  free(seq: BlockSequence): void {
    for (let i = seq.blockTable.length - 1; i >= 0; i--) {
      const id = seq.blockTable[i];
      if (this.refCounts[id] <= 0) {
        throw new PeregrineError('PGN_ERR_INTERNAL', `free: block ${id} is not in use`, { blockId: id });
      }
      if (--this.refCounts[id] > 0) continue;
      if (this.isRegistered(id)) {
        this.cachedBlockIds.add(id);
      } else {
        this.hashes[id] = null;
        this.blockTokens[id] = null;
        this.freeBlockIds.push(id);
      }
    }
    seq.blockTable = [];
    seq.numCachedTokens = 0;
  }

  /** Throws PGN_ERR_INTERNAL if the books do not balance; with `seqs`, ref counts must match their block tables. */
  checkInvariants(seqs?: Iterable<BlockSequence>): void {
    const fail = (msg: string, details: Record<string, unknown> = {}): never => {
      throw new PeregrineError('PGN_ERR_INTERNAL', `block manager invariant: ${msg}`, details);
    };
    const seen = new Uint8Array(this.numBlocks);
    for (const id of this.freeBlockIds) {
      if (seen[id]++) fail(`block ${id} listed twice`, { blockId: id });
      if (this.refCounts[id] !== 0 || this.hashes[id] !== null) fail(`free block ${id} has a ref or a hash`, { blockId: id });
    }
    for (const id of this.cachedBlockIds) {
      if (seen[id]++) fail(`block ${id} is both free and cached`, { blockId: id });
      if (this.refCounts[id] !== 0 || !this.isRegistered(id)) fail(`cached block ${id} is referenced or unregistered`, { blockId: id });
    }
    for (let id = 0; id < this.numBlocks; id++) {
      if (!seen[id] && this.refCounts[id] <= 0) fail(`block ${id} is lost (ref ${this.refCounts[id]}, not free, not cached)`, { blockId: id });
    }
    for (const [hash, id] of this.hashToBlockId) {
      if (this.hashes[id] !== hash || this.blockTokens[id] === null) fail(`hash entry ${hash} points at block ${id} with another hash`, { blockId: id });
    }
    if (seqs === undefined) return;
    const refs = new Int32Array(this.numBlocks);
    for (const seq of seqs) {
      if (seq.blockTable.length < this.numBlocksFor(seq.numCachedTokens)) fail('a sequence has cached tokens beyond its blocks');
      for (const id of seq.blockTable) refs[id]++;
    }
    for (let id = 0; id < this.numBlocks; id++) {
      if (refs[id] !== this.refCounts[id]) fail(`block ${id} has ref ${this.refCounts[id]} but ${refs[id]} block tables hold it`, { blockId: id });
    }
  }

  private numBlocksFor(numTokens: number): number {
    return Math.ceil(numTokens / this.blockSize);
  }

  private isRegistered(id: number): boolean {
    const hash = this.hashes[id];
    return hash !== null && this.hashToBlockId.get(hash) === id;
  }

  /** Block ids of the longest cached prefix of full blocks, leaving at least the last token to compute. */
  private findCachedPrefix(seq: BlockSequence): number[] {
    const hits: number[] = [];
    if (!this.enablePrefixCaching) return hits;
    const maxHits = Math.floor((seq.numTokens - 1) / this.blockSize);
    let prevHash = ROOT_BLOCK_HASH;
    for (let i = 0; i < maxHits; i++) {
      const start = i * this.blockSize;
      const hash = hashBlockTokens(prevHash, seq.tokenIds, start, start + this.blockSize);
      const id = this.hashToBlockId.get(hash);
      if (id === undefined || !this.sameTokens(id, seq.tokenIds, start)) break;
      hits.push(id);
      prevHash = hash;
    }
    return hits;
  }

  private sameTokens(id: number, tokenIds: readonly number[], start: number): boolean {
    const tokens = this.blockTokens[id] as number[];
    for (let j = 0; j < this.blockSize; j++) if (tokens[j] !== tokenIds[start + j]) return false;
    return true;
  }

  private takeBlock(): number {
    let id = this.freeBlockIds.pop();
    if (id === undefined) {
      const lru = this.cachedBlockIds.values().next();
      if (lru.done) {
        throw new PeregrineError('PGN_ERR_KV_CACHE_EXHAUSTED', `no free KV block (pool of ${this.numBlocks} blocks)`, { numBlocks: this.numBlocks });
      }
      id = lru.value;
      this.cachedBlockIds.delete(id);
      this.hashToBlockId.delete(this.hashes[id] as string);
    }
    this.hashes[id] = null;
    this.blockTokens[id] = null;
    this.refCounts[id] = 1;
    return id;
  }
}
