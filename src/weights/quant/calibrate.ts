/**
 * Static FP8 activation scales from a short calibration run (`peregrine build --calibrate`): the
 * unquantized model runs over a few windows of text, a wrapper around the backend notes max |x|
 * of the input of every linear it runs, and each quantized module gets input_scale = amax / 448
 * (compressed-tensors' static per-tensor layout). Packed q|k|v and gate|up read one input, so
 * their parts share one amax. The decoder is untouched: only `linear` is intercepted.
 */
import * as fs from 'node:fs';
import type { Backend, QuantizedWeight, Tensor } from '../../backends/backend.js';
import { createBackend, type DeviceName } from '../../backends/index.js';
import { PeregrineError } from '../../errors.js';
import { loadModel } from '../../models/load-model.js';
import type { LinearWeight, ModelWeights } from '../../models/model-weights.js';
import type { ModelSpec, WeightEntry, WeightMap, WeightSource } from '../../models/spec.js';
import { buildForwardBatch } from '../../runner/input-builder.js';
import { ModelRunner } from '../../runner/model-runner.js';
import { Tokenizer } from '../../tokenizer/tokenizer.js';
import type { TensorToWrite } from '../safetensors-writer.js';
import type { JsonObject } from './config-fields.js';
import { FP8_NAMES } from './fp8-checkpoint.js';
import { amaxOf, FP8_E4M3_MAX, FP8_MIN_ACTIVATION_SCALE } from './fp8.js';
import { f32Up } from './types.js';

export const DEFAULT_CALIB_WINDOWS = 8;
export const DEFAULT_CALIB_WINDOW_LEN = 512;
const CALIB_BLOCK_SIZE = 16;
const LM_HEAD_KEY = 'lm_head.weight';

export interface CalibrationOptions {
  /** UTF-8 text, tokenized with the model's tokenizer (BOS as the tokenizer adds it) */
  readonly textFile: string;
  /** windows of consecutive tokens from the start of the text (default DEFAULT_CALIB_WINDOWS) */
  readonly numWindows?: number;
  /** tokens per window (default DEFAULT_CALIB_WINDOW_LEN, at most the model's context) */
  readonly windowLen?: number;
  /** backend that runs the unquantized model (default 'cpu') */
  readonly device?: DeviceName;
  readonly onProgress?: (doneWindows: number, numWindows: number) => void;
}

/**
 * Wraps a backend: `linear` snapshots the first numTokens rows of x for every weight in `keys`,
 * then delegates. `flush()` (after a forward) downloads the snapshots and folds max |x| into
 * `amax`, keyed by the weight's key. Works on any backend: no host access to device memory.
 */
export class ActivationRecorder {
  readonly backend: Backend;
  /** key -> max |x| over every recorded call */
  readonly amax = new Map<string, number>();
  private pending: { key: string; snap: Tensor }[] = [];

  constructor(private readonly inner: Backend, private readonly keys: ReadonlyMap<LinearWeight, string>) {
    const linear = (out: Tensor, x: Tensor, w: Tensor | QuantizedWeight, bias: Tensor | null, numTokens: number) => {
      this.record(x, w, numTokens);
      inner.linear(out, x, w, bias, numTokens);
    };
    this.backend = new Proxy(inner, {
      get(target, prop) {
        if (prop === 'linear') return linear;
        const v = Reflect.get(target, prop, target) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
  }

  private record(x: Tensor, w: Tensor | QuantizedWeight, numTokens: number): void {
    const key = this.keys.get(w);
    if (key === undefined || numTokens === 0) return;
    const K = w.shape[1]!;
    const snap = this.inner.empty([numTokens, K], x.dtype);
    this.inner.copy(snap, x, numTokens);
    this.pending.push({ key, snap });
  }

  async flush(): Promise<void> {
    const pending = this.pending;
    this.pending = [];
    for (const { key, snap } of pending) {
      const data = await this.inner.downloadF32(snap);
      this.inner.free(snap);
      const m = amaxOf(data, 0, data.length);
      if (!Number.isFinite(m)) throw new PeregrineError('PGN_ERR_INTERNAL', `calibration: the input of '${key}' holds ${m}`, { key });
      this.amax.set(key, Math.max(this.amax.get(key) ?? 0, m));
    }
  }
}

/** Each linear weight of the model -> its canonical key (`layers.{i}.self_attn.qkv_proj.weight`, `lm_head.weight`). */
export function linearKeys(spec: ModelSpec, weights: ModelWeights, includeLmHead: boolean): Map<LinearWeight, string> {
  const keys = new Map<LinearWeight, string>();
  const gated = spec.gatedMlp || spec.moe !== null;
  weights.layers.forEach((l, i) => {
    keys.set(l.qkv, `layers.${i}.self_attn.qkv_proj.weight`);
    keys.set(l.o, `layers.${i}.self_attn.o_proj.weight`);
    if (spec.moe) return; // experts are never quantized
    keys.set(l.up, `layers.${i}.${gated ? 'mlp.gate_up_proj.weight' : 'mlp.up_proj.weight'}`);
    keys.set(l.down, `layers.${i}.mlp.down_proj.weight`);
  });
  if (includeLmHead && !spec.tieWordEmbeddings) keys.set(weights.lmHead, LM_HEAD_KEY);
  return keys;
}

/**
 * Runs `windowLen`-token windows of `ids` (consecutive, from the start) through the model on
 * `recorder.backend`, one prefill each, flushing after each. `allLogits` computes logits at every
 * position (so the LM head sees every row), else at the last one only.
 */
export async function runCalibration(
  recorder: ActivationRecorder, spec: ModelSpec, weights: ModelWeights, ids: readonly number[],
  numWindows: number, windowLen: number, allLogits: boolean, onProgress?: (done: number, total: number) => void,
): Promise<void> {
  const numBlocks = Math.ceil(windowLen / CALIB_BLOCK_SIZE);
  const runner = new ModelRunner(recorder.backend, spec, weights, {
    numBlocks, blockSize: CALIB_BLOCK_SIZE, maxModelLen: windowLen, maxNumBatchedTokens: windowLen, maxNumSeqs: 1,
    maxNumLogits: allLogits ? windowLen : 1, enableCudaGraphs: false,
  });
  const blockTable = Array.from({ length: numBlocks }, (_, j) => j);
  const logitsIndices = allLogits ? Int32Array.from({ length: windowLen }, (_, i) => i) : Int32Array.of(windowLen - 1);
  for (let w = 0; w < numWindows; w++) {
    const tokenIds = ids.slice(w * windowLen, (w + 1) * windowLen);
    const fb = buildForwardBatch([{ seq: { tokenIds, numCachedTokens: 0, blockTable }, numNewTokens: windowLen }], CALIB_BLOCK_SIZE, runner.maxBlocksPerSeq);
    await runner.forward({ ...fb, logitsIndices });
    await recorder.flush();
    onProgress?.(w + 1, numWindows);
  }
  runner.dispose(); // frees the weights too
}

/** Canonical key -> amax, spread onto the checkpoint tensor names in `targets` that each key loads (its packed parts share it). */
export function amaxByTensor(amaxByKey: ReadonlyMap<string, number>, map: WeightMap, targets: ReadonlySet<string>): Map<string, number> {
  const prefix = map.basePrefix === undefined ? '' : `${map.basePrefix}.`;
  const out = new Map<string, number>();
  for (const [key, amax] of amaxByKey) {
    const m = /^layers\.(\d+)\.(.+)$/.exec(key);
    const entry = m ? map.layer[m[2] as keyof WeightMap['layer']] : map.global[key as keyof WeightMap['global']];
    for (const name of candidateNames(entry, m ? Number(m[1]) : 0, prefix)) if (targets.has(name)) out.set(name, amax);
  }
  return out;
}

/** every checkpoint name an entry may resolve to: its names, without the base prefix, and its fallbacks' */
function candidateNames(entry: WeightEntry | undefined, layer: number, prefix: string): string[] {
  if (entry === undefined) return [];
  const src: WeightSource = typeof entry === 'string' || Array.isArray(entry) ? { names: entry as string | readonly string[] } : (entry as WeightSource);
  const names = (typeof src.names === 'string' ? [src.names] : [...src.names]).map((n) => n.replaceAll('{i}', String(layer)));
  const unprefixed = prefix ? names.filter((n) => n.startsWith(prefix)).map((n) => n.slice(prefix.length)) : [];
  return [...names, ...unprefixed, ...candidateNames(src.fallback, layer, prefix)];
}

/**
 * The first `numWindows * windowLen` token ids of the text file.
 * @throws PeregrineError PGN_ERR_INVALID_ARGUMENT when the file is missing or too short
 */
export function calibrationIds(tokenizer: Tokenizer, textFile: string, numWindows: number, windowLen: number): number[] {
  if (!fs.existsSync(textFile)) throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `calibration text ${textFile} does not exist`, { path: textFile });
  const ids = tokenizer.encode(fs.readFileSync(textFile, 'utf8'));
  const need = numWindows * windowLen;
  if (ids.length < need) {
    throw new PeregrineError(
      'PGN_ERR_INVALID_ARGUMENT',
      `calibration text ${textFile} has ${ids.length} tokens; ${numWindows} windows of ${windowLen} need ${need} (pass fewer --calib-windows or a shorter --calib-window-len)`,
      { path: textFile, numTokens: ids.length, needTokens: need },
    );
  }
  return ids.slice(0, need);
}

/**
 * The whole run: load the unquantized model in `modelDir` on `opts.device`, run the windows,
 * return max |x| of the input of each checkpoint weight in `targets`.
 * @throws PeregrineError PGN_ERR_INVALID_ARGUMENT for bad window counts or a short text;
 *   PGN_ERR_INTERNAL when a target's input was never seen (a weight the forward does not run)
 */
export async function calibrateInputAmax(modelDir: string, opts: CalibrationOptions, map: WeightMap, targets: ReadonlySet<string>, includeLmHead: boolean): Promise<Map<string, number>> {
  const backend = await createBackend(opts.device ?? 'cpu');
  try {
    const model = loadModel(modelDir, backend);
    const numWindows = opts.numWindows ?? DEFAULT_CALIB_WINDOWS;
    const windowLen = opts.windowLen ?? Math.min(DEFAULT_CALIB_WINDOW_LEN, model.spec.maxPositionEmbeddings);
    checkWindows(numWindows, windowLen, model.spec.maxPositionEmbeddings);
    const ids = calibrationIds(await Tokenizer.load(modelDir), opts.textFile, numWindows, windowLen);
    const recorder = new ActivationRecorder(backend, linearKeys(model.spec, model.weights, includeLmHead));
    await runCalibration(recorder, model.spec, model.weights, ids, numWindows, windowLen, includeLmHead, opts.onProgress);
    const amax = amaxByTensor(recorder.amax, map, targets);
    const unseen = [...targets].filter((n) => !amax.has(n));
    if (unseen.length) throw new PeregrineError('PGN_ERR_INTERNAL', `calibration saw no input for ${unseen.join(', ')}`, { tensors: unseen });
    return amax;
  } finally {
    backend.dispose();
  }
}

function checkWindows(numWindows: number, windowLen: number, maxPositions: number): void {
  if (!Number.isInteger(numWindows) || numWindows < 1) throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `calibration needs at least 1 window, got ${numWindows}`, { param: 'numWindows' });
  if (!Number.isInteger(windowLen) || windowLen < 2 || windowLen > maxPositions) {
    throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `calibration window length ${windowLen} must be 2 .. ${maxPositions} (the model's context)`, { param: 'windowLen' });
  }
}

/** amax -> the static scale: the smallest f32 >= amax / 448, so amax itself never saturates. */
export function inputScaleFor(amax: number): number {
  return Math.max(f32Up(amax / FP8_E4M3_MAX), FP8_MIN_ACTIVATION_SCALE);
}

/** `<module>.input_scale` F32 [1] */
export function inputScaleTensor(module: string, amax: number): Record<string, TensorToWrite> {
  const data = new Uint8Array(Float32Array.of(inputScaleFor(amax)).buffer);
  return { [`${module}.${FP8_NAMES.inputScale}`]: { dtype: 'F32', shape: [1], data } };
}

/** A compressed-tensors FP8 quantization_config with static per-tensor input activations instead of dynamic per-token ones. */
export function withStaticInputActivations(qc: JsonObject): JsonObject {
  const groups = qc['config_groups'] as Record<string, JsonObject>;
  const staticAct = { num_bits: 8, type: 'float', strategy: 'tensor', symmetric: true, dynamic: false, observer: 'minmax' };
  const config_groups = Object.fromEntries(Object.entries(groups).map(([name, g]) => [name, { ...g, input_activations: staticAct }]));
  return { ...qc, config_groups, quantizer: 'peregrine-rtn-minmax' };
}
