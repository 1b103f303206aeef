/**
 * A decode step's attention alone (every layer's call, over the runner's KV cache) under
 * several plans: the split count of flash-decoding follows `meta.maxSeqlenK`, which the runner
 * fixes per graph by context bucket. Shows what the bucket's splits (and their combine launch)
 * cost against a plan for the batch's real context, and against no split at all.
 */
import { bytesPerElement, type AttentionMetadata, type AttentionParams, type Backend } from '../backends/backend.js';
import type { ModelSpec } from '../models/spec.js';
import type { ModelRunner } from '../runner/model-runner.js';

/** keys per split at which the CUDA plan stops splitting (cuda-attention.ts MIN_KEYS_PER_SPLIT): maxSeqlenK this small means one split */
const ONE_SPLIT_KEYS = 64;
/** the CUDA backend's default split-decode workspace (cuda-backend.ts attentionWorkspaceBytes) */
const ATTENTION_WORKSPACE_BYTES = 32 * 2 ** 20;

export interface AttentionPlanRow {
  readonly maxSeqlenK: number;
  /** key splits the CUDA plan gives (null where unknown) */
  readonly numSplits: number | null;
  /** the CUDA decode kernel: tensor-core ('tc') or CUDA-core ('simt'); null where unknown */
  readonly kernel: 'tc' | 'simt' | null;
  /** every layer's attention, one step */
  readonly ms: number;
}

/**
 * @param meta the step's metadata (numSeqs rows, device tensors of the runner's layout)
 * @param realK the batch's longest context
 * @param plannedK the maxSeqlenK the runner's graph uses; realK and one split are tried beside it
 * @param graphMs device ms of one replay of the work `fn` queues, captured as a graph
 */
export async function attentionPlans(r: ModelRunner, meta: AttentionMetadata, realK: number, plannedK: number, graphMs: (fn: () => void) => Promise<number>): Promise<AttentionPlanRow[]> {
  const b = r.backend;
  const s = r.spec;
  if (s.alibiSlopes) return []; // the slopes tensor is the decoder's own
  const B = meta.numSeqs;
  const qkv = b.empty([B, (s.numHeads + 2 * s.numKvHeads) * s.headDim], b.activationDtype);
  const out = b.empty([B, s.numHeads * s.headDim], b.activationDtype);
  const splits = await decodeLaunchOf(b, s, r.kvCache.dtype === 'fp8');
  try {
    b.writeF32(qkv, new Float32Array(qkv.shape[0]! * qkv.shape[1]!));
    const params: AttentionParams[] = Array.from({ length: s.numLayers }, (_, i) => ({
      numHeads: s.numHeads, numKvHeads: s.numKvHeads, headDim: s.headDim, blockSize: r.blockSize, scale: s.attentionScale,
      slidingWindow: s.slidingLayers === null || s.slidingLayers[i] ? s.slidingWindow : null, logitSoftcap: s.attnLogitSoftcap,
    }));
    const rows: AttentionPlanRow[] = [];
    for (const maxSeqlenK of [...new Set([plannedK, realK, ONE_SPLIT_KEYS])]) {
      const m = { ...meta, maxSeqlenK };
      const ms = await graphMs(() => r.kvCache.layers.forEach((cache, i) => b.attention(out, qkv, cache, m, params[i]!)));
      const launch = splits?.(B, maxSeqlenK, params[0]!.slidingWindow ?? 0) ?? null;
      rows.push({ maxSeqlenK, numSplits: launch?.numSplits ?? null, kernel: launch ? (launch.tc ? 'tc' : 'simt') : null, ms });
    }
    return rows;
  } finally {
    await b.synchronize();
    b.free(qkv);
    b.free(out);
  }
}

/** The CUDA decode launch (kernel and split count) for a batch and key plan, where the backend is CUDA. */
async function decodeLaunchOf(b: Backend, s: ModelSpec, fp8: boolean): Promise<((numSeqs: number, maxSeqlenK: number, window: number) => { tc: boolean; numSplits: number }) | null> {
  if (b.device !== 'cuda') return null;
  const { decodeLaunch } = await import('../backends/cuda/cuda-attention.js');
  const { numSMs, maxSharedBytesPerBlock } = (b as Backend & { props: { numSMs: number; maxSharedBytesPerBlock: number } }).props;
  const elemBytes = bytesPerElement(b.activationDtype);
  return (numSeqs, maxSeqlenK, window) => {
    const l = decodeLaunch({
      numSeqs, numHeads: s.numHeads, numKvHeads: s.numKvHeads, headDim: s.headDim, maxSeqlenK, window, numSMs,
      workspaceBytes: ATTENTION_WORKSPACE_BYTES, elemBytes, fp8, maxSharedBytesPerBlock,
    });
    return { tc: l.tc, numSplits: l.plan.numSplits };
  };
}
