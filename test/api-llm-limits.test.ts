// The engine limits LLM options resolve to: a GPU batches like vLLM's defaults, the CPU stays small,
// explicit values win, the token budget is at least one token per sequence, and maxModelLen is checked.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { limits } from '../src/api/llm-options.js';
import { loadModelConfig } from '../src/models/config.js';
import { fixtureDir } from './helpers/golden.js';

const spec = loadModelConfig(fixtureDir('llama-gqa-llama3')).spec;

test('default limits: 256 sequences / 8192 tokens on CUDA, 64 / 2048 on the CPU; explicit values win', () => {
  assert.deepEqual([limits(spec, { device: 'cuda' }).maxNumSeqs, limits(spec, { device: 'cuda' }).maxNumBatchedTokens], [256, 8192]);
  assert.deepEqual([limits(spec, {}).maxNumSeqs, limits(spec, {}).maxNumBatchedTokens], [64, 2048]);
  assert.deepEqual([limits(spec, { device: 'cuda', maxNumSeqs: 8, maxNumBatchedTokens: 512 }).maxNumSeqs, limits(spec, { device: 'cuda', maxNumSeqs: 8, maxNumBatchedTokens: 512 }).maxNumBatchedTokens], [8, 512]);
  assert.equal(limits(spec, { maxNumSeqs: 300, maxNumBatchedTokens: 100 }).maxNumBatchedTokens, 300, 'at least one token per sequence');
  assert.equal(limits(spec, {}).maxModelLen, spec.maxPositionEmbeddings);
  assert.throws(() => limits(spec, { maxModelLen: spec.maxPositionEmbeddings + 1 }), (e: any) => e.code === 'PGN_ERR_INVALID_ARGUMENT' && /max_position_embeddings/.test(e.message));
});
