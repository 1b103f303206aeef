/**
 * Golden outputs of the tiny Hugging Face checkpoints under test/fixtures/models, made by
 * tools/fixtures/make_fixtures.py (transformers, float32, eager attention). Layout of
 * golden.json and golden-logits.bin: tools/fixtures/README.md.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PeregrineError } from '../../src/errors.js';

export interface GoldenCase {
  promptIds: number[];
  /** f32 [promptLen, vocab] logits of every prompt position */
  logits: Float32Array;
  /** 24 greedy continuation ids (HF generate, do_sample False) */
  greedyIds: number[];
  /** logits at each greedy step [24, vocab] (the distribution that chose greedyIds[k]) */
  greedyLogits: Float32Array;
  /** 'random' ids, or 'chat-template' (the tokenizer's chat sample) */
  source: string;
  /** smallest top1 - top2 gap over greedyLogits: how much numeric error the greedy ids tolerate */
  minGreedyMargin: number;
}

export interface GoldenTokenizer {
  bosToken: string;
  eosToken: string;
  specialTokens: Record<string, number>;
  vocabSize: number;
  /** `ids` include the bos the post-processor adds */
  samples: { text: string; ids: number[]; tokens: string[] }[];
  chat: { messages: { role: string; content: string }[]; addGenerationPrompt: boolean; rendered: string; ids: number[] };
}

/** golden.json without its cases: how the fixture was made and what it holds. */
export interface GoldenMeta {
  name: string;
  seed: number;
  versions: Record<string, string>;
  architecture: string;
  modelType: string;
  vocabSize: number;
  storageDtype: 'float32' | 'bfloat16';
  configForm: '4.x' | '5.x';
  tieWordEmbeddings: boolean;
  bosTokenId: number;
  eosTokenId: number;
  numGreedyTokens: number;
  rope: { ropeParameters: Record<string, unknown>; invFreq: number[]; attentionScaling: number; llama3Bands?: string[] };
  /** every file of the folder, golden.json included */
  files: string[];
  /** the safetensors header: tensor name -> dtype and shape */
  weights: Record<string, { dtype: string; shape: number[] }>;
  tokenizer: GoldenTokenizer | null;
  logitsFileBytes: number;
}

export interface GoldenFixture {
  name: string;
  dir: string;
  vocabSize: number;
  cases: GoldenCase[];
  meta: GoldenMeta;
}

interface RawCase {
  source: string;
  promptIds: number[];
  greedyIds: number[];
  minGreedyMargin: number;
  promptLogitsOffsetBytes: number;
  promptLogitsShape: [number, number];
  greedyLogitsOffsetBytes: number;
  greedyLogitsShape: [number, number];
}

const GOLDEN_FILE = 'golden.json';
const LOGITS_FILE = 'golden-logits.bin';
const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Repository root: the nearest folder above this file that holds package.json
 * (dist/test/helpers when compiled, test/helpers when run from source). */
function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new PeregrineError('PGN_ERR_INTERNAL', `no package.json above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
}

function modelsDir(): string {
  return join(repoRoot(), 'test', 'fixtures', 'models');
}

/** Absolute path of test/fixtures/models/<name>. */
export function fixtureDir(name: string): string {
  return join(modelsDir(), name);
}

/** Names of every folder under test/fixtures/models, sorted (complete or not). */
export function listFixtures(): string[] {
  const root = modelsDir();
  if (!existsSync(root)) return [];
  return readdirSync(root)
    .filter((n) => statSync(join(root, n)).isDirectory())
    .sort();
}

/** Loads test/fixtures/models/<name>. Throws PGN_ERR_CONFIG_NOT_FOUND if the folder or its
 * golden.json is missing, PGN_ERR_CONFIG_INVALID if golden.json and the logits file disagree. */
export function loadGolden(name: string): GoldenFixture {
  const dir = fixtureDir(name);
  if (!existsSync(dir)) {
    throw new PeregrineError('PGN_ERR_CONFIG_NOT_FOUND', `no golden fixture '${name}' at ${dir} (have: ${listFixtures().join(', ') || 'none'})`, { name, dir });
  }
  return loadGoldenDir(dir, name);
}

/** Loads a fixture folder at any path (loadGolden resolves the name first). */
export function loadGoldenDir(dir: string, name = dir): GoldenFixture {
  const goldenPath = join(dir, GOLDEN_FILE);
  if (!existsSync(goldenPath)) {
    throw new PeregrineError('PGN_ERR_CONFIG_NOT_FOUND', `fixture '${name}' has no ${GOLDEN_FILE} (${goldenPath})`, { name, file: goldenPath });
  }
  let raw: GoldenMeta & { cases: RawCase[] };
  try {
    raw = JSON.parse(readFileSync(goldenPath, 'utf8')) as GoldenMeta & { cases: RawCase[] };
  } catch (e) {
    throw new PeregrineError('PGN_ERR_CONFIG_INVALID', `${goldenPath} is not valid JSON: ${(e as Error).message}`, { file: goldenPath }, { cause: e });
  }
  const { cases: rawCases, ...meta } = raw;
  const vocab = meta.vocabSize;
  const invalid = (what: string, details: Record<string, unknown> = {}): PeregrineError =>
    new PeregrineError('PGN_ERR_CONFIG_INVALID', `fixture '${name}': ${what}`, { name, ...details });
  if (!Number.isInteger(vocab) || vocab <= 0 || !Array.isArray(rawCases)) {
    throw invalid(`${GOLDEN_FILE} lacks vocabSize or cases`, { file: goldenPath });
  }

  const logitsPath = join(dir, LOGITS_FILE);
  if (!existsSync(logitsPath)) {
    throw new PeregrineError('PGN_ERR_CONFIG_NOT_FOUND', `fixture '${name}' has no ${LOGITS_FILE} (${logitsPath})`, { name, file: logitsPath });
  }
  const bin = readFileSync(logitsPath);
  let offset = 0;
  const take = (label: string, offsetBytes: number, shape: [number, number], rows: number): Float32Array => {
    if (shape[0] !== rows || shape[1] !== vocab) {
      throw invalid(`${label} has shape [${shape}], expected [${rows}, ${vocab}]`, { file: goldenPath });
    }
    const numBytes = rows * vocab * 4;
    if (offsetBytes !== offset) {
      throw invalid(`${label} starts at byte ${offsetBytes}, expected ${offset} (cases are stored back to back)`, { file: logitsPath });
    }
    if (offset + numBytes > bin.length) {
      throw invalid(`${LOGITS_FILE} is truncated: ${label} needs bytes [${offset}, ${offset + numBytes}) but the file has ${bin.length}`, {
        file: logitsPath, byteRange: [offset, offset + numBytes], fileBytes: bin.length,
      });
    }
    const out = readF32LE(bin, offset, rows * vocab);
    offset += numBytes;
    return out;
  };

  const cases = rawCases.map((c, i): GoldenCase => {
    const label = `case ${i} (prompt length ${c.promptIds.length})`;
    const logits = take(`${label} prompt logits`, c.promptLogitsOffsetBytes, c.promptLogitsShape, c.promptIds.length);
    const greedyLogits = take(`${label} greedy logits`, c.greedyLogitsOffsetBytes, c.greedyLogitsShape, c.greedyIds.length);
    return { promptIds: c.promptIds, logits, greedyIds: c.greedyIds, greedyLogits, source: c.source, minGreedyMargin: c.minGreedyMargin };
  });
  if (offset !== bin.length) {
    throw invalid(`${LOGITS_FILE} has ${bin.length} bytes, the cases account for ${offset}`, { file: logitsPath, fileBytes: bin.length });
  }
  return { name: meta.name ?? name, dir, vocabSize: vocab, cases, meta };
}

function readF32LE(buf: Buffer, offsetBytes: number, count: number): Float32Array {
  if (HOST_IS_LITTLE_ENDIAN) {
    return new Float32Array(buf.buffer.slice(buf.byteOffset + offsetBytes, buf.byteOffset + offsetBytes + count * 4));
  }
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = buf.readFloatLE(offsetBytes + 4 * i);
  return out;
}
