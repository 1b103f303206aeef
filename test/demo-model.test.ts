// The bundled demo model (models/demo, made by tools/demo-model/train.py): it loads with the
// repo's loaders, its greedy output is stable and equals transformers', and Peregrine's
// perplexity on tools/demo-model/heldout.txt equals what train.py measured (ppl.json).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { LLM } from '../src/api/llm.js';
import { createBackend } from '../src/backends/index.js';
import { loadModelConfig } from '../src/models/config.js';
import { loadModel } from '../src/models/load-model.js';
import { DEFAULT_BLOCK_SIZE } from '../src/runner/kv-cache.js';
import { ModelRunner } from '../src/runner/model-runner.js';
import { computePerplexity } from '../src/bench/perplexity.js';
import { applyChatTemplate } from '../src/tokenizer/chat-template.js';
import { Tokenizer } from '../src/tokenizer/tokenizer.js';
import { Checkpoint } from '../src/weights/checkpoint.js';

/** repo root, from dist/test */
const ROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const DEMO_DIR = path.join(ROOT, 'models', 'demo');
const HELDOUT_FILE = path.join(ROOT, 'tools', 'demo-model', 'heldout.txt');
const MAX_DEMO_BYTES = 8 * 1024 * 1024;
/** windows of heldout.txt scored here: enough tokens to mean something, little enough for CI */
const NUM_PPL_WINDOWS = 16;
const PPL_REL_TOLERANCE = 0.01;
/** a window's summed NLL may differ from transformers' by this much (f32 sums of 127 tokens) */
const WINDOW_NLL_ABS_TOLERANCE = 0.01;

/** Greedy ids Peregrine gave for 'The old ship sailed' (24 tokens, no penalties), recorded here. */
const EXPECTED_GREEDY_IDS = [17, 297, 269, 321, 301, 1014, 573, 699, 17, 297, 269, 321, 301, 1014, 573, 699, 920, 269, 1726, 19, 204, 482, 269, 1841];

interface PplJson {
  heldout: { window: number; num_windows: number; predicted_per_window: number; ppl: number; window_nll_sums: number[] };
  valid: { nll: number; ppl: number };
  greedy: { max_new_tokens: number; samples: Array<{ text?: string; chat?: string; prompt_token_ids: number[]; token_ids: number[] }> };
}

function readPplJson(): PplJson {
  return JSON.parse(fs.readFileSync(path.join(DEMO_DIR, 'ppl.json'), 'utf8')) as PplJson;
}

test('the demo checkpoint loads: config, bf16 safetensors, tokenizer with chat template, <= 8 MB', async () => {
  const files = fs.readdirSync(DEMO_DIR);
  for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json', 'README.md', 'ppl.json']) {
    assert.ok(files.includes(f), `models/demo lacks ${f}`);
  }
  const totalBytes = files.reduce((a, f) => a + fs.statSync(path.join(DEMO_DIR, f)).size, 0);
  assert.ok(totalBytes <= MAX_DEMO_BYTES, `models/demo is ${totalBytes} bytes, over ${MAX_DEMO_BYTES}`);

  const { spec } = loadModelConfig(DEMO_DIR);
  assert.equal(spec.architecture, 'LlamaForCausalLM');
  assert.equal(spec.tieWordEmbeddings, true);
  assert.equal(spec.torchDtype, 'bfloat16');

  const ckpt = Checkpoint.open(DEMO_DIR);
  try {
    assert.ok(!ckpt.has('lm_head.weight'), 'tied embeddings: lm_head.weight should not be stored');
    const embed = ckpt.info('model.embed_tokens.weight');
    assert.deepEqual(embed.shape, [spec.vocabSize, spec.hiddenSize]);
    let numParams = 0;
    for (const name of ckpt.names()) {
      const info = ckpt.info(name);
      assert.equal(info.dtype, 'BF16', `${name} is ${info.dtype}`);
      numParams += info.shape.reduce((a, b) => a * b, 1);
    }
    const layerParams = spec.hiddenSize * (spec.numHeads + 2 * spec.numKvHeads) * spec.headDim
      + spec.numHeads * spec.headDim * spec.hiddenSize + 3 * spec.hiddenSize * spec.intermediateSize + 2 * spec.hiddenSize;
    assert.equal(numParams, spec.vocabSize * spec.hiddenSize + spec.numLayers * layerParams + spec.hiddenSize);
  } finally {
    ckpt.close();
  }

  const tok = await Tokenizer.load(DEMO_DIR);
  assert.equal(tok.vocabSize, spec.vocabSize);
  assert.equal(tok.bosTokenId, spec.bosTokenId);
  assert.deepEqual([tok.eosTokenId], spec.eosTokenIds);
  const ids = tok.encode('The old ship sailed');
  assert.equal(ids[0], tok.bosTokenId, 'text prompts start with <|bos|>');
  assert.equal(ids.filter((i) => i === tok.bosTokenId).length, 1);
  assert.equal(tok.decode(ids, { skipSpecialTokens: true }), 'The old ship sailed');
  const chat = applyChatTemplate(tok, [{ role: 'user', content: 'Hi' }], { addGenerationPrompt: true });
  assert.equal(chat.text, '<|bos|><|user|>\nHi<|end|>\n<|assistant|>\n');
  assert.deepEqual(chat.tokenIds.slice(0, 2), [tok.bosTokenId, tok.tokenToId('<|user|>')]);
  assert.equal(chat.tokenIds.at(-2), tok.tokenToId('<|assistant|>'));
});

test('greedy output for a fixed prompt is stable and equals transformers\' (ppl.json)', async () => {
  const ppl = readPplJson();
  const llm = await LLM.load(DEMO_DIR, { maxNumSeqs: 4, maxNumBatchedTokens: 256 });
  try {
    for (const s of ppl.greedy.samples) {
      const messages = s.chat !== undefined ? [{ role: 'user', content: s.chat }] : null;
      const promptIds = messages ? applyChatTemplate(llm.tokenizer!, messages).tokenIds : llm.encodePrompt(s.text!);
      assert.deepEqual(promptIds, s.prompt_token_ids, `prompt ids of ${JSON.stringify(s.text ?? s.chat)}`);
      const [out] = await llm.generate([promptIds], { temperature: 0, repetitionPenalty: 1, maxTokens: ppl.greedy.max_new_tokens });
      const got = out!.outputs[0]!.tokenIds;
      // both stop at <|end|> and include it (the chat sample ends there)
      assert.deepEqual(got, s.token_ids, `greedy ids of ${JSON.stringify(s.text ?? s.chat)}`);
      if (s.text === 'The old ship sailed') assert.deepEqual(got, EXPECTED_GREEDY_IDS, 'greedy ids changed since they were recorded');
    }
  } finally {
    await llm.close();
  }
});

test(`perplexity on heldout.txt (first ${NUM_PPL_WINDOWS} windows) matches train.py within 1%`, async () => {
  const ppl = readPplJson();
  const { window, window_nll_sums: expectedSums } = ppl.heldout;
  const numWindows = Math.min(NUM_PPL_WINDOWS, expectedSums.length);
  const tok = await Tokenizer.load(DEMO_DIR);
  const ids = tok.encode(fs.readFileSync(HELDOUT_FILE, 'utf8'));
  assert.equal(Math.floor(ids.length / window), ppl.heldout.num_windows, 'heldout.txt tokenizes to a different length than in train.py');

  const backend = await createBackend('cpu');
  const { spec, weights } = loadModel(DEMO_DIR, backend);
  const runner = new ModelRunner(backend, spec, weights, {
    numBlocks: Math.ceil(window / DEFAULT_BLOCK_SIZE), blockSize: DEFAULT_BLOCK_SIZE, maxModelLen: window,
    maxNumBatchedTokens: window, maxNumSeqs: 1, maxNumLogits: window,
  });
  try {
    const r = await computePerplexity(runner, ids, window, numWindows);
    r.windowNllSums.forEach((sum, w) => {
      assert.ok(Math.abs(sum - expectedSums[w]!) < WINDOW_NLL_ABS_TOLERANCE, `window ${w}: NLL sum ${sum} vs train.py ${expectedSums[w]}`);
    });
    const expected = Math.exp(expectedSums.slice(0, numWindows).reduce((a, b) => a + b, 0) / r.numPredicted);
    assert.ok(Math.abs(r.ppl / expected - 1) < PPL_REL_TOLERANCE, `perplexity ${r.ppl} vs train.py ${expected}`);
  } finally {
    runner.dispose();
    backend.dispose();
  }
});
