/**
 * The golden fixtures (tools/fixtures/make_fixtures.py) are complete and self-consistent:
 * every file is there, the checkpoint matches what golden.json says it holds, and the
 * recorded outputs agree with themselves (shapes, ids < vocab, greedy ids = argmax).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';
import { isPeregrineError } from '../src/errors.js';
import { loadModelConfig } from '../src/models/config.js';
import { getFamily } from '../src/models/registry.js';
import { fixtureDir, listFixtures, loadGolden, loadGoldenDir, type GoldenFixture } from './helpers/golden.js';

const EXPECTED = [
  'llama-gqa-llama3', 'llama-linear', 'mistral', 'qwen2',
  // the model zoo (issue 5)
  'bloom', 'falcon-40b-style', 'falcon-7b-style', 'falcon-alibi', 'falcon2-11b-style', 'gemma', 'gemma2', 'gpt-neox',
  'gpt-neox-sequential', 'gpt2', 'gptj', 'mixtral', 'mpt', 'opt', 'opt-350m-style', 'phi3', 'qwen3', 'starcoder2',
];
/** untied LM heads are stored under one of these names */
const LM_HEAD_TENSORS = ['lm_head.weight', 'embed_out.weight'];
const REQUIRED_FILES = ['config.json', 'generation_config.json', 'model.safetensors', 'golden.json', 'golden-logits.bin'];
const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json'];
const NUM_GREEDY_TOKENS = 24;
const MAX_FIXTURE_BYTES = 1_000_000;
const SAFETENSORS_DTYPE = { float32: 'F32', bfloat16: 'BF16' } as const;
const DTYPE_BYTES: Record<string, number> = { F32: 4, BF16: 2 };

function readJson(path: string): Record<string, unknown> {
  return JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
}

function argmaxRow(data: Float32Array, row: number, width: number): { index: number; margin: number } {
  let best = -Infinity, second = -Infinity, index = -1;
  for (let j = 0; j < width; j++) {
    const v = data[row * width + j]!;
    if (v > best) { second = best; best = v; index = j; } else if (v > second) second = v;
  }
  return { index, margin: best - second };
}

test('every fixture of issue point 11 is present', () => {
  const have = listFixtures();
  for (const name of EXPECTED) assert.ok(have.includes(name), `missing fixture ${name} under ${fixtureDir('')}`);
});

for (const name of listFixtures()) {
  test(`${name}: folder is complete and holds only listed files`, () => {
    const dir = fixtureDir(name);
    const present = readdirSync(dir).sort();
    for (const f of REQUIRED_FILES) assert.ok(present.includes(f), `${dir} lacks ${f}`);
    const fx = loadGolden(name);
    assert.deepEqual(present, [...fx.meta.files].sort(), `${dir}: files on disk differ from golden.json "files"`);
    if (fx.meta.tokenizer) for (const f of TOKENIZER_FILES) assert.ok(present.includes(f), `${dir} lacks ${f}`);
    const bytes = present.reduce((n, f) => n + statSync(join(dir, f)).size, 0);
    assert.ok(bytes < MAX_FIXTURE_BYTES, `${dir} is ${bytes} bytes (keep fixtures under 1 MB)`);
  });

  test(`${name}: config.json and generation_config.json match golden.json`, () => {
    const fx = loadGolden(name);
    const cfg = readJson(join(fx.dir, 'config.json'));
    const { spec } = loadModelConfig(fx.dir);
    assert.deepEqual(cfg.architectures, [fx.meta.architecture]);
    assert.equal(cfg.model_type, fx.meta.modelType);
    assert.equal(cfg.vocab_size, fx.vocabSize);
    assert.equal(cfg.bos_token_id, fx.meta.bosTokenId);
    assert.equal(cfg.eos_token_id, fx.meta.eosTokenId);
    assert.equal(cfg.tie_word_embeddings, fx.meta.tieWordEmbeddings);
    assert.ok(spec.maxPositionEmbeddings >= 256, 'room for the longest case (30 + 24 tokens) and more');
    if (fx.meta.configForm === '4.x') {
      assert.equal(cfg.torch_dtype, fx.meta.storageDtype);
      assert.equal(typeof cfg.rope_theta, 'number');
      assert.equal((cfg.rope_scaling as Record<string, unknown>).rope_type, fx.meta.rope.ropeParameters.rope_type);
      assert.ok(!('rope_parameters' in cfg) && !('dtype' in cfg), '4.x form has no rope_parameters or dtype');
      assert.match(String(cfg.transformers_version), /^4\./);
    } else {
      assert.equal(cfg.dtype, fx.meta.storageDtype);
      if (fx.meta.rope) assert.deepEqual(cfg.rope_parameters, fx.meta.rope.ropeParameters);
      assert.ok(!('rope_scaling' in cfg) && !('torch_dtype' in cfg), '5.x form has no rope_scaling or torch_dtype');
    }
    // rope is null where transformers keeps no inverse-frequency buffer (GPT-2, BLOOM, MPT, OPT, GPT-J's sinusoid table)
    if (fx.meta.rope && spec.rope) assert.equal(fx.meta.rope.invFreq.length, spec.rope.rotaryDim / 2);

    const gen = readJson(join(fx.dir, 'generation_config.json'));
    assert.equal(gen.bos_token_id, fx.meta.bosTokenId);
    assert.ok([gen.eos_token_id].flat().includes(fx.meta.eosTokenId), 'generation_config eos includes the model eos');
  });

  test(`${name}: model.safetensors holds exactly the listed tensors`, () => {
    const fx = loadGolden(name);
    const file = readFileSync(join(fx.dir, 'model.safetensors'));
    const headerBytes = Number(file.readBigUInt64LE(0));
    const header = JSON.parse(file.subarray(8, 8 + headerBytes).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
    delete header.__metadata__;
    assert.deepEqual(Object.keys(header).sort(), Object.keys(fx.meta.weights).sort());
    const dtype = SAFETENSORS_DTYPE[fx.meta.storageDtype];
    const spans: [number, number][] = [];
    for (const [tensor, info] of Object.entries(header)) {
      assert.equal(info.dtype, dtype, `${tensor} is ${info.dtype}, expected ${dtype}`);
      assert.deepEqual(info.shape, fx.meta.weights[tensor]!.shape, `${tensor} shape`);
      const numel = info.shape.reduce((a, b) => a * b, 1);
      assert.equal(info.data_offsets[1] - info.data_offsets[0], numel * DTYPE_BYTES[dtype]!, `${tensor} byte length`);
      spans.push(info.data_offsets);
    }
    spans.sort((a, b) => a[0] - b[0]);
    let end = 0;
    for (const [s, e] of spans) { assert.equal(s, end, 'tensors are packed back to back'); end = e; }
    assert.equal(8 + headerBytes + end, file.length, 'data section ends at end of file');
    assert.equal(LM_HEAD_TENSORS.some((n) => n in header), !fx.meta.tieWordEmbeddings, 'LM head stored iff untied');
    const { spec } = loadModelConfig(fx.dir);
    const embed = getFamily(spec.architecture).weightMap(spec).global['embed_tokens.weight'];
    assert.equal(typeof embed, 'string');
    assert.deepEqual(header[embed as string]!.shape[0], fx.vocabSize);
  });

  test(`${name}: golden outputs are self-consistent`, () => {
    const fx: GoldenFixture = loadGolden(name);
    const V = fx.vocabSize;
    const random = fx.cases.filter((c) => c.source.startsWith('random'));
    assert.ok(random.length >= 4, 'at least 4 random prompts');
    assert.equal(new Set(random.map((c) => c.promptIds.length)).size, random.length, 'random prompts differ in length');
    fx.cases.forEach((c, i) => {
      const where = `${name} case ${i}`;
      assert.ok(c.promptIds.length > 0);
      for (const id of [...c.promptIds, ...c.greedyIds]) assert.ok(Number.isInteger(id) && id >= 0 && id < V, `${where}: id ${id} outside [0, ${V})`);
      if (c.source.startsWith('random')) assert.ok(c.promptIds.every((id) => id >= 3), `${where}: random ids start at 3`);
      assert.equal(c.logits.length, c.promptIds.length * V);
      assert.equal(c.greedyIds.length, NUM_GREEDY_TOKENS);
      assert.equal(c.greedyLogits.length, NUM_GREEDY_TOKENS * V);
      assert.ok(c.logits.every(Number.isFinite) && c.greedyLogits.every(Number.isFinite), `${where}: non-finite logits`);
      let minMargin = Infinity;
      for (let k = 0; k < NUM_GREEDY_TOKENS; k++) {
        const { index, margin } = argmaxRow(c.greedyLogits, k, V);
        assert.equal(index, c.greedyIds[k], `${where}: greedyIds[${k}] is not the argmax of greedyLogits[${k}]`);
        minMargin = Math.min(minMargin, margin);
      }
      assert.ok(Math.abs(minMargin - c.minGreedyMargin) < 1e-6, `${where}: recorded margin ${c.minGreedyMargin}, found ${minMargin}`);
      // The first greedy step scores the same position as the last prompt row.
      const last = c.logits.subarray((c.promptIds.length - 1) * V);
      let diff = 0;
      for (let j = 0; j < V; j++) diff = Math.max(diff, Math.abs(last[j]! - c.greedyLogits[j]!));
      assert.ok(diff < 1e-4, `${where}: greedy step 0 differs from the last prompt row by ${diff}`);
    });
  });
}

test('llama-gqa-llama3: tokenizer and chat template reproduce the recorded ids', () => {
  const fx = loadGolden('llama-gqa-llama3');
  const tk = fx.meta.tokenizer;
  assert.ok(tk, 'golden.json has a tokenizer section');
  const tokenizerJson = readJson(join(fx.dir, 'tokenizer.json'));
  const tokenizerConfig = readJson(join(fx.dir, 'tokenizer_config.json'));
  const tok = new Tokenizer(tokenizerJson, tokenizerConfig);
  assert.equal(tok.get_vocab(true).size, fx.vocabSize);
  assert.equal(tk.specialTokens[tokenizerConfig.bos_token as string], fx.meta.bosTokenId);
  assert.equal(tk.specialTokens[tokenizerConfig.eos_token as string], fx.meta.eosTokenId);
  for (const s of tk.samples) {
    assert.deepEqual(tok.encode(s.text).ids, s.ids, `ids of ${JSON.stringify(s.text)}`);
    assert.equal(tok.decode(s.ids, { skip_special_tokens: true }), s.text);
  }
  const rendered = new Template(tokenizerConfig.chat_template as string).render({
    messages: tk.chat.messages, add_generation_prompt: tk.chat.addGenerationPrompt,
    bos_token: tokenizerConfig.bos_token, eos_token: tokenizerConfig.eos_token,
  });
  assert.equal(rendered, tk.chat.rendered);
  assert.deepEqual(tok.encode(rendered, { add_special_tokens: false }).ids, tk.chat.ids);
  const chatCase = fx.cases.find((c) => c.source.startsWith('chat-template'));
  assert.deepEqual(chatCase?.promptIds, tk.chat.ids, 'the chat sample is also a golden case');
});

test('loadGolden names the missing fixture', () => {
  assert.throws(() => loadGolden('no-such-fixture'), (e: unknown) =>
    isPeregrineError(e, 'PGN_ERR_CONFIG_NOT_FOUND') && e.message.includes('no-such-fixture') && e.message.includes('mistral'));
});

test('loadGoldenDir rejects a truncated logits file, naming the file and byte range', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'pgn-golden-'));
  try {
    const src = fixtureDir('mistral');
    for (const f of ['golden.json', 'golden-logits.bin']) copyFileSync(join(src, f), join(tmp, f));
    const size = statSync(join(tmp, 'golden-logits.bin')).size;
    truncateSync(join(tmp, 'golden-logits.bin'), size - 4);
    assert.throws(() => loadGoldenDir(tmp, 'mistral-copy'), (e: unknown) =>
      isPeregrineError(e, 'PGN_ERR_CONFIG_INVALID') && e.message.includes('golden-logits.bin') && e.message.includes(`${size - 4}`));
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});
