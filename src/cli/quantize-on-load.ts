/** `--quantization fp8|int8|int4` on serve / generate / bench with a checkpoint: the flag and its progress bar. */
import type { BuildProgress } from '../weights/quant/build.js';
import { QUANTIZATION_KINDS } from '../weights/quant/quantize-on-load.js';
import type { QuantKind } from '../weights/quant/types.js';
import { UsageError } from './args.js';
import { formatBytes, ProgressBar } from './progress.js';

export const QUANTIZATION_HELP = `--quantization fp8|int8|int4   quantize a BF16 / F16 / F32 checkpoint at load (once: the build is
                                 cached under $PEREGRINE_CACHE_DIR or ~/.cache/peregrine)`;

export function quantizationArg(v: string | boolean | undefined): QuantKind | undefined {
  if (v === undefined) return undefined;
  if (!(QUANTIZATION_KINDS as readonly string[]).includes(String(v))) throw new UsageError(`--quantization expects ${QUANTIZATION_KINDS.join(', ')}, got "${String(v)}"`);
  return String(v) as QuantKind;
}

/** A progress bar on stderr for the first (uncached) quantization of a checkpoint. */
export function quantizeProgress(kind: QuantKind): (p: BuildProgress) => void {
  const bar = new ProgressBar(process.stderr, `quantizing ${kind} (once)`);
  return (p) => {
    bar.update(p.doneBytes, p.totalBytes, `${formatBytes(p.doneBytes)} / ${formatBytes(p.totalBytes)}`);
    if (p.doneTensors === p.totalTensors) bar.done();
  };
}
