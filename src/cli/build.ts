/** `peregrine build`: quantize a checkpoint folder into a new one that loads without repeating the work. */
import { buildQuantizedCheckpoint } from '../weights/quant/build.js';
import { DEFAULT_CALIB_WINDOW_LEN, DEFAULT_CALIB_WINDOWS, type CalibrationOptions } from '../weights/quant/calibrate.js';
import type { QuantKind } from '../weights/quant/types.js';
import { deviceArg, intArg, parse, requireString, UsageError } from './args.js';
import { formatBytes, ProgressBar } from './progress.js';

export const BUILD_HELP = `peregrine build --model DIR --quantization fp8|int8|int4 -o OUT [options]

Quantizes every linear weight of the checkpoint in DIR (attention and MLP projections; not
embeddings, norms or lm_head) and writes a checkpoint folder OUT that loads as it is:
  fp8   E4M3 weights, dynamic per-token FP8 activations (compressed-tensors float-quantized)
  int8  weight-only INT8, symmetric per channel          (compressed-tensors pack-quantized)
  int4  weight-only INT4, groups of 128 along the input  (GPTQ, desc_act false)
Weights round to nearest. With --calibrate, fp8 runs the unquantized model over the text FILE
first and writes static per-tensor activation scales (max |x| / 448 of each linear's input,
compressed-tensors input_scale) instead of dynamic per-token ones. config.json gets the
quantization_config; tokenizer and generation files are copied.

Options:
  --fp8-scale tensor|channel   fp8 weight scales (default tensor)
  --group-size N               int4 group size (default 128); int8: groups instead of per channel
  --asym                       int4 with zero points (default symmetric)
  --quantize-lm-head           quantize lm_head too
  --calibrate FILE             fp8: static activation scales from this text (tokenized with the model's tokenizer)
  --calib-windows N            windows of text to run (default ${DEFAULT_CALIB_WINDOWS})
  --calib-window-len L         tokens per window (default ${DEFAULT_CALIB_WINDOW_LEN}, at most the model's context)
  --device cpu|cuda            backend of the calibration run (default cpu)
  --jobs N                     worker threads (default: the cores, at most 8)
  --max-shard-size GB          split the weights into shards of this size (default 4)
  --overwrite                  replace the weights in a non-empty OUT
`;

const KINDS: readonly QuantKind[] = ['fp8', 'int8', 'int4'];
const BYTES_PER_GB = 2 ** 30;

export async function runBuild(argv: string[]): Promise<void> {
  const a = parse(argv, {
    model: { type: 'string' },
    quantization: { type: 'string', short: 'q' },
    output: { type: 'string', short: 'o' },
    'fp8-scale': { type: 'string' },
    'group-size': { type: 'string' },
    asym: { type: 'boolean' },
    'quantize-lm-head': { type: 'boolean' },
    jobs: { type: 'string' },
    'max-shard-size': { type: 'string' },
    overwrite: { type: 'boolean' },
    calibrate: { type: 'string' },
    'calib-windows': { type: 'string' },
    'calib-window-len': { type: 'string' },
    device: { type: 'string' },
  });
  if (a.help) {
    process.stdout.write(BUILD_HELP);
    return;
  }
  const kind = requireString(a.quantization, 'quantization') as QuantKind;
  if (!KINDS.includes(kind)) throw new UsageError(`--quantization expects ${KINDS.join(', ')}, got "${kind}"`);
  const fp8Scale = a['fp8-scale'];
  if (fp8Scale !== undefined && fp8Scale !== 'tensor' && fp8Scale !== 'channel') throw new UsageError(`--fp8-scale expects tensor or channel, got "${String(fp8Scale)}"`);
  if (a.asym && kind !== 'int4') throw new UsageError('--asym applies to --quantization int4 only');
  const groupSize = intArg(a['group-size'], 'group-size');
  if (groupSize !== undefined && groupSize <= 0) throw new UsageError('--group-size must be positive');
  const jobs = intArg(a.jobs, 'jobs');
  if (jobs !== undefined && jobs < 1) throw new UsageError('--jobs must be at least 1');
  const shardGb = a['max-shard-size'] === undefined ? undefined : Number(a['max-shard-size']);
  if (shardGb !== undefined && !(shardGb > 0)) throw new UsageError(`--max-shard-size expects a positive number of GB, got "${String(a['max-shard-size'])}"`);

  const calibration = calibrationArgs(a, kind);

  const bar = new ProgressBar(process.stderr, `quantizing ${kind}`);
  const result = await buildQuantizedCheckpoint({
    modelDir: requireString(a.model, 'model'),
    outDir: requireString(a.output, 'output'),
    kind,
    fp8Scale: fp8Scale as 'tensor' | 'channel' | undefined,
    groupSize,
    symmetric: !a.asym,
    quantizeLmHead: a['quantize-lm-head'] === true,
    jobs,
    maxShardBytes: shardGb === undefined ? undefined : Math.floor(shardGb * BYTES_PER_GB),
    overwrite: a.overwrite === true,
    calibration,
    onProgress: (p) => bar.update(p.doneBytes, p.totalBytes, `${p.doneTensors}/${p.totalTensors} tensors ${p.tensor}`),
  });
  bar.done();
  for (const s of result.skipped) process.stderr.write(`kept ${s.name} unquantized: ${s.reason}\n`);
  process.stdout.write(
    `wrote ${result.outDir}: ${result.numQuantized} linear weights quantized to ${kind}, ` +
      `${result.numInputScales ? `with ${result.numInputScales} static input scales, ` : ''}` +
      `${formatBytes(result.inputBytes)} -> ${formatBytes(result.outputBytes)} in ${result.seconds.toFixed(1)} s\n`,
  );
}

function calibrationArgs(a: ReturnType<typeof parse>, kind: QuantKind): CalibrationOptions | undefined {
  const textFile = a.calibrate;
  const numWindows = intArg(a['calib-windows'], 'calib-windows');
  const windowLen = intArg(a['calib-window-len'], 'calib-window-len');
  if (textFile === undefined) {
    if (numWindows !== undefined || windowLen !== undefined || a.device !== undefined) throw new UsageError('--calib-windows, --calib-window-len and --device apply with --calibrate only');
    return undefined;
  }
  if (typeof textFile !== 'string' || textFile === '') throw new UsageError('--calibrate expects a text file');
  if (kind !== 'fp8') throw new UsageError(`--calibrate gives activation scales, which only --quantization fp8 uses (not ${kind})`);
  if (numWindows !== undefined && numWindows < 1) throw new UsageError('--calib-windows must be at least 1');
  if (windowLen !== undefined && windowLen < 2) throw new UsageError('--calib-window-len must be at least 2');
  const bar = new ProgressBar(process.stderr, 'calibrating');
  return {
    textFile, numWindows, windowLen, device: deviceArg(a.device),
    onProgress: (done, total) => {
      bar.update(done, total, `${done}/${total} windows`);
      if (done === total) bar.done();
    },
  };
}
