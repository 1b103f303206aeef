/**
 * Where a decode step's time goes (`peregrine bench latency --profile`). For one step of a
 * batch it measures, each on its own:
 * - the forward pass run eagerly through an OpProfiler: time, calls and bytes per op (a linear
 *   by its weight's name, the rest by kind); on CUDA also each op's calls alone, replayed as one
 *   CUDA graph, since the event pair around each eager op costs a few microseconds of its own;
 * - the whole forward replayed as one CUDA graph (what the runner replays);
 * - the step's attention under several split plans (attention-plans.ts);
 * - the runner's other per-step work: its input uploads (one write per ForwardBatch array, and
 *   one packed write of the same bytes for comparison) and the sampling of the step's tokens;
 * - on CUDA, each linear against cuBLASLt alone on the same shape and weights (gemm-reference.ts),
 *   and the device copy bandwidth, all timed by events.
 *
 * The forward is the runner's own DecoderModel code over the runner's weights and KV cache,
 * built again on the profiling backend with buffers for this batch only; the batch is padded
 * and its attention split count chosen as for the runner's decode graph.
 *
 * So that the host's launch cost (~12 us an eager op) stays out of event times, a run of device
 * copies is queued first, long enough for the host to queue all the timed work behind it: the
 * ops then run back to back.
 */
import type { Backend, Tensor } from '../backends/backend.js';
import { DecoderModel, type DeviceInputs } from '../models/decoder.js';
import { canCaptureGraphs, contextBucket, graphBuckets, padDecodeBatch } from '../runner/decode-graphs.js';
import type { ForwardBatch } from '../runner/forward-batch.js';
import type { ModelRunner } from '../runner/model-runner.js';
import { createSamplingState, makeSamplingParams, sampleRow } from '../sampling/index.js';
import { attentionPlans, type AttentionPlanRow } from './attention-plans.js';
import type { GemmReference } from './gemm-reference.js';
import { DeviceDelay, graphReplayMs, hostMs, profiledRuns, repeat } from './device-timing.js';
import { hasEvents, linearNames, OpProfiler, type OpRow } from './op-profiler.js';
import { median } from './stats.js';

export interface StepProfile {
  /** the card (CUDA: its name) and the day of the run */
  readonly device: string;
  readonly date: string;
  readonly numSeqs: number;
  /** rows the forward ran: numSeqs padded to the runner's graph bucket */
  readonly numRows: number;
  readonly maxSeqlenK: number;
  /** device copy bandwidth (read + write) timed by events in the same run; null on the CPU */
  readonly copyTBs: number | null;
  /** per op: `ms` the median over the eager runs (device-timing.ts profiledRuns), `graphMs` the row's calls alone as a graph */
  readonly ops: OpRow[];
  /** sum of the ops' times */
  readonly forwardMs: number;
  /** device time from the first op's start to the last op's end (CPU: wall time) */
  readonly spanMs: number;
  /** one replay of the same forward as a CUDA graph (device time); null without graphs */
  readonly graphMs: number | null;
  /** the step's attention alone (graph) under the runner's split plan, the real context's and one split; empty without graphs */
  readonly attention: AttentionPlanRow[];
  /** host: one write per ForwardBatch array (as the runner writes them), and one write of the same bytes */
  readonly uploadMs: number;
  readonly packedUploadMs: number;
  /** the step's sampling as the runner does it (device sampler: params up, kernel, ids down; CPU: logits down, host argmax) */
  readonly sampleMs: number;
  readonly gemms: GemmReference[];
}

/** Profiles one decode step of `fb` (one new token per sequence) on `r`'s backend, weights and KV cache. */
export async function profileDecodeStep(r: ModelRunner, fb: ForwardBatch): Promise<StepProfile> {
  const b = r.backend;
  const graphs = canCaptureGraphs(b) && r.config.enableCudaGraphs !== false && process.env.PEREGRINE_CUDA_GRAPHS !== '0';
  const { batch, maxSeqlenK } = graphs ? padForGraph(r, fb) : { batch: fb, maxSeqlenK: Math.max(...fb.contextLens) };
  const B = batch.numSeqs;
  const { prof, model, inputs, delay, close } = openProfiledStep(r, batch);
  try {
    const copyTBs = delay ? await delay.measureTBs() : null;
    const inp: DeviceInputs = { ...inputs.device, meta: { ...inputs.device.meta, numSeqs: B, numTokens: B, maxSeqlenQ: 1, maxSeqlenK, isDecode: true } };
    const forward = () => model.forward(inp, r.kvCache.layers, B);
    prof.enabled = false;
    forward();
    await b.synchronize();

    const { runs, spans } = await profiledRuns(b, prof, delay, forward);
    const ops: OpRow[] = [];
    for (const [k, row] of runs[0]!.entries()) {
      const ms = median(runs.map((ops) => ops[k]!.ms));
      ops.push(graphs ? { ...row, ms, graphMs: await graphReplayMs(b, delay, () => prof.replay(row.op)) } : { ...row, ms });
    }

    const graphMs = graphs ? await graphReplayMs(b, delay, forward) : null;
    const attention = graphs ? await attentionPlans(r, inp.meta, Math.max(...batch.contextLens), maxSeqlenK, (fn) => graphReplayMs(b, delay, fn)) : [];

    const uploadMs = median(await repeat(() => hostMs(b, () => inputs.write(batch))));
    const packed = b.empty([inputs.numWords], 'i32');
    const words = new Int32Array(inputs.numWords);
    const packedUploadMs = median(await repeat(() => hostMs(b, () => b.writeI32(packed, words))));
    b.free(packed);

    const sampleMs = await sampleTime(b, b.view(model.logits, [fb.numSeqs, r.spec.vocabSize]), fb.numSeqs);
    let gemms: GemmReference[] = [];
    if (b.device === 'cuda' && delay) {
      const { cublasLtReference } = await import('./gemm-reference.js');
      gemms = await cublasLtReference(b as never, prof.linears, (fn) => graphReplayMs(b, delay, fn));
    }
    return {
      device: deviceName(b), date: new Date().toISOString().slice(0, 10), numSeqs: fb.numSeqs, numRows: B, maxSeqlenK, copyTBs, ops, forwardMs: ops.reduce((s, o) => s + o.ms, 0), spanMs: median(spans),
      graphMs, attention, uploadMs, packedUploadMs, sampleMs, gemms,
    };
  } finally {
    await close();
  }
}

/**
 * What profiling one step of `batch` needs: an OpProfiler over `r`'s backend, the runner's decoder
 * built again on it with buffers for this batch only, the batch's inputs on the device, and (CUDA) a
 * device delay; `close` frees them once the device is done.
 */
export function openProfiledStep(r: ModelRunner, batch: ForwardBatch) {
  const b = r.backend;
  const prof = new OpProfiler(b, linearNames(r.weights, r.spec));
  prof.contextLens = batch.contextLens;
  const model = new DecoderModel(r.spec, prof.backend, r.weights, { maxNumTokens: batch.numTokens, maxNumSeqs: batch.numSeqs, maxNumLogits: batch.numSeqs, blockSize: r.blockSize });
  const inputs = uploadInputs(b, batch);
  const delay = hasEvents(b) ? new DeviceDelay(b) : null;
  const close = async () => {
    await b.synchronize();
    delay?.dispose();
    inputs.free();
    model.dispose();
    prof.dispose();
  };
  return { prof, model, inputs, delay, close };
}

export function deviceName(b: Backend): string {
  return b.device === 'cuda' ? (b as Backend & { props?: { name?: string } }).props?.name ?? 'cuda' : 'cpu';
}

/** The batch as the runner's decode graph runs it: padded to its bucket, attention split for its context bucket. */
function padForGraph(r: ModelRunner, fb: ForwardBatch): { batch: ForwardBatch; maxSeqlenK: number } {
  const bucket = graphBuckets(Math.min(r.config.maxNumSeqs, r.config.maxNumBatchedTokens)).find((x) => x >= fb.numSeqs) ?? fb.numSeqs;
  return { batch: padDecodeBatch(fb, bucket, r.numBlocks, r.blockSize), maxSeqlenK: contextBucket(Math.max(...fb.contextLens), r.maxModelLen) };
}

/** The step's inputs on the device, written the way the runner writes them (one copy per array). */
function uploadInputs(b: Backend, fb: ForwardBatch) {
  const arrays = (f: ForwardBatch) => [f.tokenIds, f.positions, f.slotMapping, f.logitsIndices, f.cuSeqlensQ, f.contextLens, f.blockTables];
  const tensors = arrays(fb).map((a) => b.empty([a.length], 'i32'));
  const [tokenIds, positions, slotMapping, logitsIndices, cuSeqlensQ, contextLens, blockTables] = tensors as [Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor];
  const write = (f: ForwardBatch) => arrays(f).forEach((a, i) => b.writeI32(tensors[i]!, a));
  write(fb);
  const device: DeviceInputs = {
    tokenIds, positions, slotMapping, logitsIndices,
    meta: { numSeqs: fb.numSeqs, numTokens: fb.numTokens, cuSeqlensQ, contextLens, blockTables, maxBlocksPerSeq: fb.maxBlocksPerSeq, maxSeqlenQ: 1, maxSeqlenK: 0, isDecode: true },
  };
  return { device, write, numWords: arrays(fb).reduce((s, a) => s + a.length, 0), free: () => tensors.forEach((t) => b.free(t)) };
}

interface SamplerLike {
  sample(logits: Tensor, rows: readonly { logitsRow: number; state: ReturnType<typeof createSamplingState> }[]): Promise<unknown>;
  dispose(): void;
}

/** Wall ms of sampling `numSeqs` greedy rows of `logits` as the runner does on this backend. */
async function sampleTime(b: Backend, logits: Tensor, numSeqs: number): Promise<number> {
  const greedy = makeSamplingParams({ temperature: 0 });
  const rows = Array.from({ length: numSeqs }, (_, i) => ({ logitsRow: i, state: createSamplingState(greedy, [1], []) }));
  const withSampler = b as Backend & { createSampler?(maxRows: number, vocab: number): SamplerLike };
  const vocab = logits.shape[1]!;
  if (typeof withSampler.createSampler === 'function' && process.env.PEREGRINE_GPU_SAMPLING !== '0') {
    const sampler = withSampler.createSampler(numSeqs, vocab);
    try {
      await sampler.sample(logits, rows);
      return median(await repeat(async () => {
        await b.synchronize();
        const t0 = performance.now();
        await sampler.sample(logits, rows);
        return performance.now() - t0;
      }));
    } finally {
      sampler.dispose();
    }
  }
  const scratch = new Float32Array(vocab);
  return median(await repeat(async () => {
    await b.synchronize();
    const t0 = performance.now();
    const host = await b.downloadF32(logits);
    rows.forEach((row, i) => sampleRow(host.subarray(i * vocab, (i + 1) * vocab), row.state, scratch));
    return performance.now() - t0;
  }));
}
