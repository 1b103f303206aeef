/**
 * Quantize a checkpoint folder into a new one (`peregrine build`): every linear weight of the
 * family's weight map is quantized (round to nearest, on worker threads), everything else is
 * copied as stored; config.json gains the quantization_config the loader detects, and the
 * tokenizer / generation files come along. Tensors stream through one at a time into shards.
 * FP8 with `calibration` first runs the unquantized model over some text (calibrate.ts) and
 * writes static per-tensor input scales instead of dynamic per-token activations.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PeregrineError } from '../../errors.js';
import { loadModelConfig } from '../../models/config.js';
import { getFamily } from '../../models/registry.js';
import { Checkpoint, INDEX_FILE } from '../checkpoint.js';
import type { TensorToWrite } from '../safetensors-writer.js';
import { calibrateInputAmax, inputScaleTensor, withStaticInputActivations, type CalibrationOptions } from './calibrate.js';
import { quantizationConfigFor, unsupportedShapeReason, type CheckpointQuantOptions } from './checkpoint-writer.js';
import { detectQuantizationInDir } from './index.js';
import { linearTargets } from './linear-targets.js';
import { HF_QUANT_CONFIG_FILE } from './modelopt.js';
import { QuantizePool } from './quantize-pool.js';
import { DEFAULT_MAX_SHARD_BYTES, ShardWriter } from './shard-writer.js';
import { moduleOf } from './tensors.js';
import { unsupportedQuant } from './types.js';

export interface BuildOptions extends CheckpointQuantOptions {
  readonly modelDir: string;
  readonly outDir: string;
  /** quantize lm_head too (default false: it is the most sensitive linear) */
  readonly quantizeLmHead?: boolean;
  /** worker threads (default: the cores, at most MAX_DEFAULT_JOBS); 1 runs inline */
  readonly jobs?: number;
  readonly maxShardBytes?: number;
  /** replace the weights of a non-empty outDir */
  readonly overwrite?: boolean;
  readonly onProgress?: (p: BuildProgress) => void;
  /** fp8 only: static input scales from a calibration run (default: dynamic per-token activations) */
  readonly calibration?: CalibrationOptions;
}

export interface BuildProgress {
  readonly doneTensors: number;
  readonly totalTensors: number;
  readonly doneBytes: number;
  readonly totalBytes: number;
  readonly tensor: string;
}

export interface BuildResult {
  readonly outDir: string;
  readonly numQuantized: number;
  /** linear weights left in high precision, and why */
  readonly skipped: readonly { readonly name: string; readonly reason: string }[];
  readonly inputBytes: number;
  readonly outputBytes: number;
  readonly files: readonly string[];
  readonly seconds: number;
  /** modules written with a static input_scale (0 without calibration) */
  readonly numInputScales: number;
}

const MAX_DEFAULT_JOBS = 8;
const FLOAT_DTYPES = new Set(['F32', 'F16', 'BF16']);
/** weight files of other formats, never copied */
const WEIGHT_FILE = /\.(safetensors|bin|pt|pth|gguf|msgpack|h5|ckpt)$/;
const NOT_COPIED = new Set(['config.json', INDEX_FILE, HF_QUANT_CONFIG_FILE]);

export async function buildQuantizedCheckpoint(opts: BuildOptions): Promise<BuildResult> {
  const started = Date.now();
  const modelDir = path.resolve(opts.modelDir);
  const outDir = path.resolve(opts.outDir);
  if (opts.calibration && opts.kind !== 'fp8') throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `calibration gives activation scales, which only fp8 uses (not ${opts.kind})`, { kind: opts.kind });
  if (modelDir === outDir) throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `the output folder must differ from the model folder (${modelDir})`);
  const { spec, raw } = loadModelConfig(modelDir);
  const already = detectQuantizationInDir(modelDir, raw);
  if (already) throw unsupportedQuant(`${modelDir} is already quantized (${already.method}, ${already.kind}); build from the BF16 / F32 checkpoint`, { method: already.method });
  prepareOutDir(outDir, opts.overwrite ?? false);

  const ckpt = Checkpoint.open(modelDir);
  const pool = new QuantizePool(opts.jobs ?? Math.min(os.availableParallelism(), MAX_DEFAULT_JOBS));
  try {
    const map = getFamily(spec.architecture).weightMap(spec);
    const targets = linearTargets(ckpt, spec, map, opts.quantizeLmHead ?? false);
    const inputAmax = opts.calibration ? await calibrateInputAmax(modelDir, opts.calibration, map, targets.names, opts.quantizeLmHead ?? false) : null;
    const skipped = [...targets.skipped];
    const names = ckpt.names();
    const sizeOf = (n: string) => ckpt.info(n).end - ckpt.info(n).start;
    const totalBytes = names.reduce((a, n) => a + sizeOf(n), 0);
    const writer = new ShardWriter(outDir, opts.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES);
    const maxInFlight = Math.max(2, 2 * pool.jobs);
    const inFlight: { name: string; tensors: Promise<Record<string, TensorToWrite>> }[] = [];
    let doneTensors = 0, doneBytes = 0, numQuantized = 0, numInputScales = 0;
    const retire = async () => {
      const { name, tensors } = inFlight.shift()!;
      writer.add(await tensors);
      doneBytes += sizeOf(name);
      opts.onProgress?.({ doneTensors: ++doneTensors, totalTensors: names.length, doneBytes, totalBytes, tensor: name });
    };
    for (const name of names) {
      const info = ckpt.info(name);
      const module = moduleOf(name);
      const isTarget = targets.names.has(name);
      const reason = !isTarget ? null : module === null ? 'its name does not end in .weight' : whyKept(info.dtype, info.shape, opts);
      if (reason) skipped.push({ name, reason });
      let tensors: Promise<Record<string, TensorToWrite>>;
      if (isTarget && !reason) {
        const [N, K] = info.shape as [number, number];
        const raw = ckpt.read(name);
        tensors = pool.run({ bytes: raw.bytes, dtype: raw.dtype, N, K, opts: quantOptions(opts), module: module! });
        numQuantized++;
        const amax = inputAmax?.get(name);
        if (amax !== undefined) {
          tensors = tensors.then((t) => ({ ...t, ...inputScaleTensor(module!, amax) }));
          numInputScales++;
        }
      } else {
        const t = ckpt.read(name);
        tensors = Promise.resolve({ [name]: { dtype: t.dtype, shape: t.shape, data: t.bytes } });
      }
      tensors.catch(() => {}); // awaited in order by retire(); avoids an unhandled rejection meanwhile
      inFlight.push({ name, tensors });
      while (inFlight.length >= maxInFlight) await retire();
    }
    while (inFlight.length) await retire();
    const files = writer.finish();

    const ignore = [...new Set(skipped.map((s) => moduleOf(s.name) ?? s.name))];
    if (!opts.quantizeLmHead || spec.tieWordEmbeddings) ignore.unshift('lm_head');
    const qc = quantizationConfigFor(quantOptions(opts), ignore);
    const config = { ...raw, quantization_config: inputAmax ? withStaticInputActivations(qc) : qc };
    fs.writeFileSync(path.join(outDir, 'config.json'), JSON.stringify(config, null, 2) + '\n');
    const copied = copyAuxFiles(modelDir, outDir);
    return { outDir, numQuantized, skipped, inputBytes: totalBytes, outputBytes: writer.totalBytes, files: ['config.json', ...files, ...copied], seconds: (Date.now() - started) / 1000, numInputScales };
  } finally {
    ckpt.close();
    await pool.close();
  }
}

function quantOptions(o: CheckpointQuantOptions): CheckpointQuantOptions {
  return { kind: o.kind, fp8Scale: o.fp8Scale, groupSize: o.groupSize, symmetric: o.symmetric };
}

/** why a linear weight stays in high precision, or null to quantize it */
function whyKept(dtype: string, shape: readonly number[], opts: CheckpointQuantOptions): string | null {
  if (!FLOAT_DTYPES.has(dtype)) return `it is stored as ${dtype}, not F32 / F16 / BF16`;
  if (shape.length !== 2) return `it is ${shape.length}-D, not [out, in]`;
  return unsupportedShapeReason(opts.kind, shape[0]!, shape[1]!);
}

function prepareOutDir(outDir: string, overwrite: boolean): void {
  if (fs.existsSync(outDir)) {
    if (!fs.statSync(outDir).isDirectory()) throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `${outDir} exists and is not a folder`, { outDir });
    const old = fs.readdirSync(outDir);
    if (old.length && !overwrite) {
      throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `${outDir} is not empty (${old.length} entries); pass --overwrite to replace its weights`, { outDir });
    }
    for (const f of old) if (WEIGHT_FILE.test(f) || f === INDEX_FILE) fs.rmSync(path.join(outDir, f), { force: true });
  }
  fs.mkdirSync(outDir, { recursive: true });
}

/** tokenizer, generation config, chat template, README...: every top-level file but weights and configs we rewrite */
function copyAuxFiles(modelDir: string, outDir: string): string[] {
  const copied: string[] = [];
  for (const e of fs.readdirSync(modelDir, { withFileTypes: true })) {
    if (!e.isFile() || WEIGHT_FILE.test(e.name) || NOT_COPIED.has(e.name)) continue;
    fs.copyFileSync(path.join(modelDir, e.name), path.join(outDir, e.name));
    copied.push(e.name);
  }
  return copied.sort();
}
