/**
 * Latency of the model itself on one backend (a tensor-parallel group: through rank 0): decode ms/step at several batch sizes
 * (after an `isl`-token prefill of each sequence), prefill time and TFLOP/s, and the
 * achieved memory bandwidth of a decode step against a device copy measured in the same run.
 * "decode ms/step" is the runner's own cost per step (no scheduler, each step waited for); "serving
 * ms/token" streams the same batch through the engine, as a server does (async scheduling on CUDA);
 * "TTFT ms (engine)" is one fresh prompt of the prefill length through the engine to its first token.
 */
import { bytesPerElement } from '../backends/backend.js';
import type { LLM } from '../api/llm.js';
import { buildForwardBatch } from '../runner/input-builder.js';
import { latencyTarget, type LatencyTarget } from './latency-target.js';
import { formatTable, median, randomPrompts } from './stats.js';
import { profileDecodeStep, type StepProfile } from './decode-profile.js';
import { profileTables } from './profile-tables.js';
import { prefillProfileTable, profilePrefillStep, type PrefillProfile } from './prefill-profile.js';
import { createSamplingState, makeSamplingParams } from '../sampling/index.js';

export interface LatencyOptions {
  readonly batchSizes: readonly number[];
  readonly isl: number;
  readonly osl: number;
  readonly prefillLens: readonly number[];
  /** per batch size, one more decode step run through the op profiler (decode-profile.ts; one device only) */
  readonly profile?: boolean;
}

export interface DecodeRow {
  batch: number;
  msPerStep: number;
  tokPerS: number;
  weightBytes: number;
  kvBytes: number;
  achievedTBs: number;
  /**
   * median time between a request's tokens when `batch` requests stream through the engine (what a
   * client sees; async scheduling where it is on hides the host work of each step)
   */
  servingMsPerToken: number;
}
/** `ms`: the forward alone; `ttftMs`: one request of that many fresh tokens through the engine, to its first token */
export interface PrefillRow { tokens: number; ms: number; tflops: number; ttftMs: number }
export interface LatencyResult { copyTBs: number; decode: DecodeRow[]; prefill: PrefillRow[]; profiles?: StepProfile[]; prefillProfiles?: PrefillProfile[] }

function paramCount(r: LatencyTarget): number {
  const s = r.spec;
  const H = s.hiddenSize, q = s.numHeads * s.headDim, kv = s.numKvHeads * s.headDim, F = s.intermediateSize;
  const perLayer = H * (q + 2 * kv) + q * H + (s.gatedMlp ? 3 : 2) * H * F;
  return s.numLayers * perLayer + s.vocabSize * H; // LM head read per step; the embedding is a lookup
}

async function timeMs(r: LatencyTarget, fn: () => Promise<unknown>): Promise<number> {
  await r.backend.synchronize();
  const t0 = performance.now();
  await fn();
  await r.backend.synchronize();
  return performance.now() - t0;
}

/**
 * `batch` requests of `isl` random tokens streamed through the engine at once (greedy, `osl`
 * tokens, ignore_eos): the median gap between consecutive tokens of a request, past the first
 * few (graph capture, prefill).
 */
async function servingInterTokenMs(llm: LLM, batch: number, isl: number, osl: number, vocab: number): Promise<number> {
  const params = { maxTokens: osl, temperature: 0, ignoreEos: true };
  const gaps: number[] = [];
  await Promise.all(randomPrompts(batch, isl, 10, vocab - 1, batch + 101).map(async (p) => {
    const times: number[] = [];
    for await (const d of llm.stream(p, params)) for (let i = 0; i < d.tokenIds.length; i++) times.push(performance.now());
    for (let i = Math.min(4, times.length - 1) + 1; i < times.length; i++) gaps.push(times[i]! - times[i - 1]!);
  }));
  return gaps.length ? median(gaps) : NaN;
}

/**
 * Time to first token through the engine (scheduling, prefill, sampling, output): one request of `T`
 * fresh random tokens (a new prompt each run: nothing from the prefix cache), greedy, one token; the
 * median of `runs` after a warm-up.
 */
async function engineTtftMs(llm: LLM, T: number, vocab: number, runs = 3): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i <= runs; i++) {
    const prompt = randomPrompts(1, T, 10, vocab - 1, 7919 * (i + 1) + T)[0]!;
    const t0 = performance.now();
    let first = NaN;
    for await (const d of llm.stream(prompt, { maxTokens: 1, temperature: 0, ignoreEos: true })) if (d.tokenIds.length > 0 && Number.isNaN(first)) first = performance.now() - t0;
    if (i > 0) times.push(first);
  }
  return median(times);
}

/** device-to-device copy bandwidth (bytes read + written) over a 1 GiB (CPU: 64 MiB) buffer */
async function copyBandwidth(r: LatencyTarget): Promise<number> {
  const b = r.backend;
  const rows = b.device === 'cuda' ? 32768 : 1024;
  const cols = 16384;
  const x = b.empty([rows, cols], b.activationDtype), y = b.empty([rows, cols], b.activationDtype);
  b.copy(y, x, rows);
  const times: number[] = [];
  for (let i = 0; i < 5; i++) times.push(await timeMs(r, async () => b.copy(y, x, rows)));
  b.free(x); b.free(y);
  return (2 * rows * cols * bytesPerElement(b.activationDtype)) / (median(times) / 1000) / 1e12;
}


export async function runLatency(llm: LLM, o: LatencyOptions): Promise<LatencyResult> {
  const r = latencyTarget(llm);
  const s = r.spec;
  const bs = r.blockSize;
  const V = s.vocabSize;
  const bpe = bytesPerElement(r.backend.activationDtype);
  const copyTBs = await copyBandwidth(r);
  const decode: DecodeRow[] = [];
  const profiles: StepProfile[] | null = o.profile ? [] : null;
  const prefillProfiles: PrefillProfile[] | null = o.profile ? [] : null;
  for (const B of o.batchSizes) {
    const perSeq = Math.ceil((o.isl + o.osl) / bs);
    if (B * perSeq > r.numBlocks || B > r.config.maxNumSeqs) { decode.push({ batch: B, msPerStep: NaN, tokPerS: NaN, weightBytes: 0, kvBytes: 0, achievedTBs: NaN, servingMsPerToken: NaN }); continue; }
    // greedy through the runner's execute path: on CUDA the argmax runs on the device
    const greedy = makeSamplingParams({ temperature: 0, maxTokens: o.osl, ignoreEos: true });
    const seqs = randomPrompts(B, o.isl, 10, V - 1, B).map((p, i) => {
      const output: number[] = [];
      return { tokenIds: p, numCachedTokens: 0, blockTable: Array.from({ length: perSeq }, (_, j) => i * perSeq + j), samplingState: createSamplingState(greedy, p.slice(), output), output };
    });
    const run = async (group: typeof seqs, numNewTokens: number) => {
      const results = await r.execute({ entries: group.map((seq) => ({ seq, numNewTokens })) });
      results.forEach((res, k) => {
        const seq = group[k]!;
        seq.numCachedTokens += numNewTokens;
        seq.tokenIds.push(res!.tokenId);
        seq.output.push(res!.tokenId);
      });
    };
    // prefill in chunks under the token budget
    const perChunk = Math.max(1, Math.floor(r.config.maxNumBatchedTokens / o.isl));
    for (let i = 0; i < B; i += perChunk) await run(seqs.slice(i, i + perChunk), o.isl);
    const stepMs: number[] = [];
    for (let step = 0; step < o.osl - 1; step++) stepMs.push(await timeMs(r, () => run(seqs, 1)));
    const ms = median(stepMs.slice(Math.min(3, stepMs.length - 1)));
    const weightBytes = r.weightBytesPerGpu;
    const avgCtx = o.isl + o.osl / 2;
    const kvBytes = B * avgCtx * 2 * s.numLayers * Math.max(1, s.numKvHeads / r.tp) * s.headDim * (llm.kvCacheDtype === 'fp8' ? 1 : bpe); // per GPU
    const servingMsPerToken = await servingInterTokenMs(llm, B, o.isl, o.osl, V);
    decode.push({ batch: B, msPerStep: ms, tokPerS: (B * 1000) / ms, weightBytes, kvBytes, achievedTBs: (weightBytes + kvBytes) / (ms / 1000) / 1e12, servingMsPerToken });
    if (profiles) profiles.push(await profileDecodeStep(llm.runner, buildForwardBatch(seqs.map((seq) => ({ seq, numNewTokens: 1 })), bs, r.maxBlocksPerSeq)));
  }
  const prefill: PrefillRow[] = [];
  for (const T of o.prefillLens) {
    if (T > r.config.maxNumBatchedTokens || Math.ceil(T / bs) > r.numBlocks) { prefill.push({ tokens: T, ms: NaN, tflops: NaN, ttftMs: NaN }); continue; }
    const seq = { tokenIds: randomPrompts(1, T, 10, V - 1, T)[0]!, numCachedTokens: 0, blockTable: Array.from({ length: Math.ceil(T / bs) }, (_, j) => j) };
    const fb = buildForwardBatch([{ seq, numNewTokens: T }], bs, r.maxBlocksPerSeq);
    await r.forward(fb);
    const times: number[] = [];
    for (let i = 0; i < 3; i++) times.push(await timeMs(r, () => r.forward(fb)));
    const ms = median(times);
    const flops = 2 * paramCount(r) * T + 2 * s.numLayers * s.numHeads * s.headDim * T * T; // GEMMs + causal attention (QK^T and PV, half masked)
    prefill.push({ tokens: T, ms, tflops: flops / (ms / 1000) / 1e12, ttftMs: await engineTtftMs(llm, T, V) });
    if (prefillProfiles) prefillProfiles.push(await profilePrefillStep(llm.runner, fb));
  }
  return { copyTBs, decode, prefill, ...(profiles ? { profiles } : {}), ...(prefillProfiles ? { prefillProfiles } : {}) };
}

export function latencyTables(res: LatencyResult, hfMsPerStep?: Map<number, number>): string {
  const dec = formatTable([
    ['batch', 'decode ms/step', 'tok/s', 'weights+KV GB/step', 'achieved TB/s', '% of copy BW', 'floor ms', 'serving ms/token', 'vs HF'],
    ...res.decode.map((d) => {
      const gb = (d.weightBytes + d.kvBytes) / 1e9;
      const floorMs = ((d.weightBytes + d.kvBytes) / (res.copyTBs * 1e12)) * 1000;
      const hf = hfMsPerStep?.get(d.batch);
      return [d.batch, d.msPerStep, d.tokPerS, gb, d.achievedTBs, (100 * d.achievedTBs) / res.copyTBs, floorMs, d.servingMsPerToken, hf ? `${(hf / d.msPerStep).toFixed(1)}x` : '-'];
    }),
  ]);
  const pre = formatTable([
    ['prefill tokens', 'ms', 'TFLOP/s', 'TTFT ms (engine)'],
    ...res.prefill.map((p) => [p.tokens, p.ms, p.tflops, p.ttftMs]),
  ]);
  const profiles = (res.profiles ?? []).map((p) => profileTables(p, res.copyTBs, res.decode.find((d) => d.batch === p.numSeqs)?.msPerStep ?? NaN));
  const prefillProfiles = (res.prefillProfiles ?? []).map(prefillProfileTable);
  return [`device copy bandwidth: ${res.copyTBs.toFixed(3)} TB/s (read + write)`, dec, pre, ...profiles, ...prefillProfiles].join('\n\n');
}

