import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BlockManager, type BlockSequence } from '../src/kvcache/block-manager.js';
import { hashBlockTokens, ROOT_BLOCK_HASH } from '../src/kvcache/prefix-hash.js';
import { isPeregrineError } from '../src/errors.js';

function seqOf(tokenIds: number[]): BlockSequence {
  return {
    tokenIds,
    get numTokens() {
      return tokenIds.length;
    },
    numCachedTokens: 0,
    blockTable: [],
  };
}

function range(start: number, n: number): number[] {
  return Array.from({ length: n }, (_, i) => start + i);
}

/** Admits `seq`, marks all its tokens computed and registers its full blocks. */
function admitAndCompute(bm: BlockManager, seq: BlockSequence): void {
  assert.ok(bm.canAllocate(seq));
  bm.allocate(seq);
  seq.numCachedTokens = seq.numTokens;
  bm.cacheFullBlocks(seq);
}

test('allocate and free balance the pool', () => {
  const bm = new BlockManager(10, 4);
  const a = seqOf(range(1, 10));
  assert.ok(bm.canAllocate(a));
  bm.allocate(a);
  assert.deepEqual(a.blockTable, [0, 1, 2]);
  assert.equal(a.numCachedTokens, 0);
  assert.equal(bm.numUsedBlocks, 3);
  assert.equal(bm.numFreeBlocks, 7);
  bm.checkInvariants([a]);
  bm.free(a);
  assert.deepEqual(a.blockTable, []);
  assert.equal(bm.numUsedBlocks, 0);
  assert.equal(bm.numFreeBlocks, 10);
  assert.equal(bm.numCachedBlocks, 0, 'blocks never computed are not cached');
  bm.checkInvariants([a]);
});

test('canAllocate refuses more blocks than are available', () => {
  const bm = new BlockManager(3, 4);
  const a = seqOf(range(1, 8));
  bm.allocate(a);
  assert.equal(bm.canAllocate(seqOf(range(100, 5))), false);
  assert.equal(bm.canAllocate(seqOf(range(100, 4))), true);
});

test('appendSlot adds a block only at block boundaries', () => {
  const bm = new BlockManager(2, 4);
  const tokens = range(1, 4);
  const a = seqOf(tokens);
  bm.allocate(a);
  assert.equal(a.blockTable.length, 1);
  tokens.push(5);
  assert.ok(bm.canAppend(a));
  bm.appendSlot(a);
  assert.equal(a.blockTable.length, 2);
  tokens.push(6, 7, 8);
  assert.ok(bm.canAppend(a));
  bm.appendSlot(a);
  assert.equal(a.blockTable.length, 2);
  tokens.push(9);
  assert.equal(bm.canAppend(a), false, 'pool is empty');
  assert.throws(() => bm.appendSlot(a), (e) => isPeregrineError(e, 'PGN_ERR_KV_CACHE_EXHAUSTED'));
});

test('a shared prefix is reused with reference counts, and never the whole prompt', () => {
  const bm = new BlockManager(16, 4);
  const a = seqOf(range(1, 12));
  admitAndCompute(bm, a);
  assert.equal(bm.numUsedBlocks, 3);

  const b = seqOf([...range(1, 8), 50, 51, 52]);
  bm.allocate(b);
  assert.equal(b.numCachedTokens, 8);
  assert.deepEqual(b.blockTable.slice(0, 2), a.blockTable.slice(0, 2));
  assert.notEqual(b.blockTable[2], a.blockTable[2]);
  bm.checkInvariants([a, b]);

  // same 12 tokens: the last block would cover the whole prompt, so it is recomputed
  const c = seqOf(range(1, 12));
  bm.allocate(c);
  assert.equal(c.numCachedTokens, 8);
  const d = seqOf(range(1, 13));
  bm.allocate(d);
  assert.equal(d.numCachedTokens, 12);
  assert.deepEqual(d.blockTable.slice(0, 3), a.blockTable);
  bm.checkInvariants([a, b, c, d]);

  // queried 12 + 11 + 12 + 13 tokens, hit 0 + 8 + 8 + 12
  assert.equal(bm.prefixHitRate, 28 / 48);

  bm.free(a);
  bm.checkInvariants([b, c, d]);
  bm.free(d);
  // a's third block is now unreferenced and stays cached
  assert.equal(bm.numCachedBlocks, 1);
  bm.free(b);
  bm.free(c);
  bm.checkInvariants([]);
  assert.equal(bm.numUsedBlocks, 0);
  assert.equal(bm.numCachedBlocks + bm.numFreeBlocks, 16);
  // a, b, c, d's full computed blocks: a registered 3; b, c, d only their allocations
  assert.equal(bm.numCachedBlocks, 3);
});

test('a hash hit whose tokens differ is a miss', () => {
  const bm = new BlockManager(8, 4);
  const a = seqOf(range(1, 8));
  admitAndCompute(bm, a);
  // make the hash of another block point at a's first block, as a collision would
  const other = [9, 9, 9, 9, 9];
  const internals = bm as unknown as { hashToBlockId: Map<string, number> };
  internals.hashToBlockId.set(hashBlockTokens(ROOT_BLOCK_HASH, other, 0, 4), a.blockTable[0]);
  const b = seqOf(other);
  bm.allocate(b);
  assert.equal(b.numCachedTokens, 0);
  assert.notEqual(b.blockTable[0], a.blockTable[0]);
});

test('only computed blocks are registered', () => {
  const bm = new BlockManager(8, 4);
  const a = seqOf(range(1, 12));
  bm.allocate(a);
  a.numCachedTokens = 5; // one chunk of prefill done: only block 0 is full and computed
  bm.cacheFullBlocks(a);
  const b = seqOf(range(1, 12));
  bm.allocate(b);
  assert.equal(b.numCachedTokens, 4);
  a.numCachedTokens = 12;
  bm.cacheFullBlocks(a);
  const c = seqOf(range(1, 13));
  bm.allocate(c);
  assert.equal(c.numCachedTokens, 12);
  bm.checkInvariants([a, b, c]);
});

test('unreferenced cached blocks are evicted LRU, tail blocks first', () => {
  const bm = new BlockManager(4, 2);
  const a = seqOf(range(1, 6));
  admitAndCompute(bm, a);
  assert.deepEqual(a.blockTable, [0, 1, 2]);
  bm.free(a);
  assert.equal(bm.numCachedBlocks, 3);
  assert.equal(bm.numFreeBlocks, 1);

  // two new blocks: the free one, then a's last block (freed first)
  const x = seqOf([100, 101, 102, 103]);
  assert.ok(bm.canAllocate(x));
  bm.allocate(x);
  assert.deepEqual(x.blockTable, [3, 2]);
  assert.equal(bm.numCachedBlocks, 2);
  bm.free(x);
  bm.checkInvariants([]);

  const again = seqOf([...range(1, 6), 7]);
  assert.ok(bm.canAllocate(again));
  bm.allocate(again);
  assert.equal(again.numCachedTokens, 4, 'blocks 0 and 1 survived, block 2 was evicted');
  assert.deepEqual(again.blockTable.slice(0, 2), [0, 1]);
  bm.checkInvariants([again]);
});

test('older frees are evicted before newer ones', () => {
  const bm = new BlockManager(5, 2);
  const a = seqOf([1, 2, 3, 4]);
  const b = seqOf([5, 6, 7, 8]);
  admitAndCompute(bm, a);
  admitAndCompute(bm, b);
  const aBlocks = [...a.blockTable];
  bm.free(a);
  bm.free(b);
  const x = seqOf(range(100, 6));
  bm.allocate(x);
  assert.deepEqual(x.blockTable.slice(1).sort(), aBlocks.sort());
  bm.free(x);
  const b2 = seqOf([5, 6, 7, 8, 1]);
  bm.allocate(b2);
  assert.equal(b2.numCachedTokens, 4, "b's blocks survived");
  const a2 = seqOf([1, 2, 3]);
  assert.ok(bm.canAllocate(a2));
  bm.allocate(a2);
  assert.equal(a2.numCachedTokens, 0, "a's blocks were evicted");
  bm.checkInvariants([b2, a2]);
});

test('canAllocate counts unreferenced prefix hits as taken from the pool', () => {
  const bm = new BlockManager(3, 2);
  const a = seqOf([1, 2, 3, 4]);
  admitAndCompute(bm, a);
  bm.free(a);
  assert.equal(bm.numCachedBlocks, 2);
  assert.ok(bm.canAllocate(seqOf([1, 2, 3, 4, 5, 6])), '2 hits + 1 new block');
  assert.equal(bm.canAllocate(seqOf([1, 2, 3, 4, 5, 6, 7, 8])), false, '2 hits + 2 new blocks > 3');
});

test('equal blocks computed concurrently: one is registered, the other freed plainly', () => {
  const bm = new BlockManager(8, 4);
  const a = seqOf(range(1, 9));
  const b = seqOf(range(1, 9));
  bm.allocate(a);
  bm.allocate(b);
  a.numCachedTokens = b.numCachedTokens = 9;
  bm.cacheFullBlocks(a);
  bm.cacheFullBlocks(b);
  bm.checkInvariants([a, b]);
  bm.free(b);
  bm.free(a);
  bm.checkInvariants([]);
  assert.equal(bm.numCachedBlocks, 2);
  assert.equal(bm.numFreeBlocks, 6);
});

test('prefix caching off: no hits, nothing kept', () => {
  const bm = new BlockManager(8, 4, { enablePrefixCaching: false });
  const a = seqOf(range(1, 9));
  admitAndCompute(bm, a);
  bm.free(a);
  assert.equal(bm.numCachedBlocks, 0);
  const b = seqOf(range(1, 9));
  bm.allocate(b);
  assert.equal(b.numCachedTokens, 0);
  assert.equal(bm.prefixHitRate, 0);
});

test('checkInvariants catches a double free and bad sizes are rejected', () => {
  const bm = new BlockManager(4, 4);
  const a = seqOf(range(1, 4));
  bm.allocate(a);
  const table = [...a.blockTable];
  bm.free(a);
  a.blockTable = table;
  assert.throws(() => bm.free(a), (e) => isPeregrineError(e, 'PGN_ERR_INTERNAL'));
  assert.throws(() => bm.checkInvariants([a]), (e) => isPeregrineError(e, 'PGN_ERR_INTERNAL'));
  assert.throws(() => new BlockManager(0, 16), (e) => isPeregrineError(e, 'PGN_ERR_INVALID_ARGUMENT'));
  assert.throws(() => new BlockManager(4, 1.5), (e) => isPeregrineError(e, 'PGN_ERR_INVALID_ARGUMENT'));
});
