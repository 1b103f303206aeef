// buildForwardBatch's block tables are as wide as the batch's longest sequence needs (not
// ceil(maxModelLen / blockSize)), and the runner lays those rows out at its own stride
// (Backend.writeI32Rows), keeping the rest of each device row.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { buildForwardBatch } from '../src/runner/input-builder.js';

const seq = (numTokens: number, blockTable: number[], numCachedTokens = 0) => ({ tokenIds: Array.from({ length: numTokens }, (_, i) => i + 1), numCachedTokens, blockTable });

test('a batch\'s block tables are as wide as its longest sequence needs', () => {
  // blocks of 4: 9 tokens need 3 blocks, 3 tokens 1; the model allows 8192 blocks a sequence
  const fb = buildForwardBatch([{ seq: seq(9, [7, 2, 5, 11]), numNewTokens: 9 }, { seq: seq(3, [4]), numNewTokens: 3 }], 4, 8192);
  assert.equal(fb.maxBlocksPerSeq, 3);
  assert.deepEqual([...fb.blockTables], [7, 2, 5, 4, -1, -1]);
  // a decode step of a sequence with 12 cached tokens reaches block 4
  const d = buildForwardBatch([{ seq: seq(13, [1, 2, 3, 4], 12), numNewTokens: 1 }], 4, 8192);
  assert.equal(d.maxBlocksPerSeq, 4);
  assert.deepEqual([...d.blockTables], [1, 2, 3, 4]);
  // more blocks than the model allows is still an error naming the limit
  assert.throws(() => buildForwardBatch([{ seq: seq(9, [1, 2, 3]), numNewTokens: 9 }], 4, 2), (e: any) => e.code === 'PGN_ERR_INTERNAL' && /max 2/.test(e.message));
});

test('writeI32Rows writes rows at the destination stride and keeps the rest of each row', () => {
  const b = new CpuBackend();
  const t = b.fromI32([3, 4], Int32Array.from({ length: 12 }, (_, i) => 100 + i));
  b.writeI32Rows(t, Int32Array.of(1, 2, 3, 4), 2, 2, 4);
  return b.downloadI32(t).then((v) => {
    assert.deepEqual([...v], [1, 2, 102, 103, 3, 4, 106, 107, 108, 109, 110, 111]);
    assert.throws(() => b.writeI32Rows(t, Int32Array.of(1, 2, 3, 4, 5), 1, 5, 4), /do not fit/);
    assert.throws(() => b.writeI32Rows(t, Int32Array.of(1, 2), 4, 1, 4), /do not fit/);
  });
});

test('a runner at a long max_model_len writes only the block-table columns its steps use', async () => {
  const { LLM } = await import('../src/api/llm.js');
  const { fixtureDir } = await import('./helpers/golden.js');
  const llm = await LLM.load(fixtureDir('llama-gqa-llama3'), { maxModelLen: 1024 });
  const b = llm.backend;
  const widths: number[] = [];
  const writeRows = b.writeI32Rows.bind(b);
  b.writeI32Rows = (dst, data, rows, width, stride) => {
    widths.push(width);
    assert.equal(stride, llm.runner.maxBlocksPerSeq);
    writeRows(dst, data, rows, width, stride);
  };
  try {
    const want = await llm.generate([[5, 6, 7, 8, 9]], { maxTokens: 20, temperature: 0, ignoreEos: true });
    // 5 + 20 tokens in blocks of 16: two columns of 64, through every step
    assert.equal(llm.runner.maxBlocksPerSeq, 64);
    assert.ok(widths.length >= 20 && widths.every((w) => w <= 2), `widths ${widths.join(',')}`);
    assert.equal(want[0]!.outputs[0]!.tokenIds.length, 20);
  } finally {
    await llm.close();
  }
});
