/**
 * How long `peregrine build` takes on a real shape (issue 6: "quantizing an 8B model takes
 * seconds to a minute"): writes a random BF16 checkpoint of the shape (random-checkpoint.ts),
 * then quantizes it with each requested format, timing each build end to end (read, quantize on
 * worker threads, write shards).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { HfConfig } from '../models/config.js';
import { buildQuantizedCheckpoint } from '../weights/quant/build.js';
import type { QuantKind } from '../weights/quant/types.js';
import { writeRandomCheckpoint } from './random-checkpoint.js';
import { formatTable } from './stats.js';

export interface BuildBenchOptions {
  readonly config: HfConfig;
  readonly label: string;
  readonly kinds: readonly QuantKind[];
  /** where the checkpoints go (default a temp folder, removed afterwards) */
  readonly dir?: string;
  readonly jobs?: number;
  readonly onLine?: (line: string) => void;
}

export interface BuildBenchRow {
  readonly kind: QuantKind;
  readonly seconds: number;
  readonly inputBytes: number;
  readonly outputBytes: number;
  readonly numQuantized: number;
}

export interface BuildBenchResult {
  readonly label: string;
  readonly cores: number;
  readonly jobs: number | null;
  readonly checkpointBytes: number;
  readonly writeSeconds: number;
  readonly rows: readonly BuildBenchRow[];
}

export async function runBuildBench(o: BuildBenchOptions): Promise<BuildBenchResult> {
  const root = o.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'pgn-build-bench-'));
  const src = path.join(root, 'bf16');
  try {
    o.onLine?.(`writing a random BF16 checkpoint of ${o.label} to ${src}`);
    const ck = writeRandomCheckpoint(o.config, src);
    const rows: BuildBenchRow[] = [];
    for (const kind of o.kinds) {
      const out = path.join(root, kind);
      o.onLine?.(`peregrine build --quantization ${kind}`);
      const r = await buildQuantizedCheckpoint({ modelDir: src, outDir: out, kind, jobs: o.jobs, overwrite: true });
      rows.push({ kind, seconds: r.seconds, inputBytes: r.inputBytes, outputBytes: r.outputBytes, numQuantized: r.numQuantized });
      fs.rmSync(out, { recursive: true, force: true });
    }
    return { label: o.label, cores: os.cpus().length, jobs: o.jobs ?? null, checkpointBytes: ck.bytes, writeSeconds: ck.seconds, rows };
  } finally {
    if (o.dir === undefined) fs.rmSync(root, { recursive: true, force: true });
    else fs.rmSync(src, { recursive: true, force: true });
  }
}

export function buildBenchTable(r: BuildBenchResult): string {
  const gb = (b: number) => (b / 2 ** 30).toFixed(2);
  return `${r.label}: random BF16 checkpoint of ${gb(r.checkpointBytes)} GiB written in ${r.writeSeconds.toFixed(1)} s; ${r.cores} cores, jobs ${r.jobs ?? 'default'}\n\n` +
    formatTable([
      ['quantization', 'build s', 'linears quantized', 'input GiB', 'output GiB', 'input GiB/s'],
      ...r.rows.map((x) => [x.kind, x.seconds, x.numQuantized, gb(x.inputBytes), gb(x.outputBytes), (x.inputBytes / 2 ** 30 / x.seconds).toFixed(2)]),
    ]);
}
