/**
 * Where a prefill step's time goes (`peregrine bench latency --prefill N --profile`): the forward of one
 * N-token prompt run eagerly through an OpProfiler (prefill runs eagerly in the runner too), per op its
 * time, and the arithmetic rate of the linears and the causal attention (TFLOP/s) or the bandwidth of
 * the rest. On CUDA the ops are timed by events behind a device delay, as decode-profile.ts does.
 */
import { leadingDecodeSeqs, type Backend } from '../backends/backend.js';
import type { DeviceInputs } from '../models/decoder.js';
import type { ForwardBatch } from '../runner/forward-batch.js';
import type { ModelRunner } from '../runner/model-runner.js';
import { deviceName, openProfiledStep } from './decode-profile.js';
import { profiledRuns } from './device-timing.js';
import type { OpRow } from './op-profiler.js';
import { formatTable, median } from './stats.js';


export interface PrefillOpRow extends OpRow {
  /** floating-point operations of the row's calls (linears and attention), 0 for the rest */
  readonly flops: number;
}

export interface PrefillProfile {
  readonly device: string;
  readonly date: string;
  readonly numTokens: number;
  readonly ops: PrefillOpRow[];
  /** sum of the ops' times */
  readonly forwardMs: number;
  /** first op's start to last op's end (device; CPU: wall time) */
  readonly spanMs: number;
}

/** Profiles the prefill forward of `fb` (every token new) on `r`'s backend, weights and KV cache. */
export async function profilePrefillStep(r: ModelRunner, fb: ForwardBatch): Promise<PrefillProfile> {
  const b: Backend = r.backend;
  const T = fb.numTokens, S = fb.numSeqs;
  const { prof, model, inputs, delay, close } = openProfiledStep(r, fb);
  try {
    let maxQ = 0;
    for (let s = 0; s < S; s++) maxQ = Math.max(maxQ, fb.cuSeqlensQ[s + 1]! - fb.cuSeqlensQ[s]!);
    const inp: DeviceInputs = { ...inputs.device, meta: { ...inputs.device.meta, numSeqs: S, numTokens: T, maxSeqlenQ: maxQ, maxSeqlenK: Math.max(...fb.contextLens), isDecode: false, numDecodeSeqs: leadingDecodeSeqs(fb.cuSeqlensQ, S) } };
    const forward = () => model.forward(inp, r.kvCache.layers, S);
    prof.enabled = false;
    forward();
    await b.synchronize();
    const { runs, spans } = await profiledRuns(b, prof, delay, forward);
    const linearFlops = new Map(prof.linears.map((l) => [l.op, 2 * l.M * l.N * l.K]));
    const attentionFlops = causalAttentionFlops(r, fb);
    const ops = runs[0]!.map((row, k): PrefillOpRow => ({
      ...row,
      ms: median(runs.map((o) => o[k]!.ms)),
      flops: row.calls * (linearFlops.get(row.op) ?? (row.op === 'attention' ? attentionFlops : 0)),
    }));
    return { device: deviceName(b), date: new Date().toISOString().slice(0, 10), numTokens: T, ops, forwardMs: ops.reduce((s, o) => s + o.ms, 0), spanMs: median(spans) };
  } finally {
    await close();
  }
}

/** One layer's attention FLOPs: QK^T and PV over the keys each query sees (causal, after the cached ones). */
function causalAttentionFlops(r: ModelRunner, fb: ForwardBatch): number {
  let pairs = 0;
  for (let s = 0; s < fb.numSeqs; s++) {
    const q = fb.cuSeqlensQ[s + 1]! - fb.cuSeqlensQ[s]!, ctx = fb.contextLens[s]!;
    for (let i = 0; i < q; i++) pairs += ctx - q + i + 1;
  }
  return 4 * r.spec.numHeads * r.spec.headDim * pairs;
}

export function prefillProfileTable(p: PrefillProfile): string {
  const total = p.ops.reduce((s, o) => s + o.ms, 0);
  const title = `prefill step profile (${p.device}, ${p.date}): ${p.numTokens} tokens, eager; ms: ${p.device === 'cpu' ? 'wall' : 'device'} time of the op (median of runs)`;
  const rows = p.ops.map((o) => [o.op, o.calls, o.ms, (100 * o.ms / total).toFixed(1), o.flops ? o.flops / (o.ms / 1000) / 1e12 : '-', o.bytes / o.ms / 1e6]);
  const flops = p.ops.reduce((s, o) => s + o.flops, 0);
  return `${title}\n\n${formatTable([
    ['op', 'calls', 'ms', '% of sum', 'TFLOP/s', 'GB/s'],
    ...rows,
    ['sum of ops', p.ops.reduce((s, o) => s + o.calls, 0), total, '100', flops / (total / 1000) / 1e12, p.ops.reduce((s, o) => s + o.bytes, 0) / total / 1e6],
  ])}\n\nforward span ${p.spanMs.toFixed(3)} ms (${p.device === 'cpu' ? 'wall' : 'device'}; outside the ops: ${(p.spanMs - total).toFixed(3)} ms)`;
}
