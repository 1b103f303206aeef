/**
 * Paged attention dispatch. Pure decode steps (one query per sequence) go to the
 * flash-decoding kernel, split along the keys when the batch alone would fill less than half
 * the GPU's block slots; everything else (prefill, chunked prefill, mixed batches) to the
 * tiled tensor-core prefill kernel. Head sizes without tuned kernels (tiny test models, 40,
 * 112, ...) take a simple generic kernel. All read K/V only from the paged cache.
 *
 * The number of splits depends only on host-side numbers (batch shape and
 * meta.maxSeqlenK), so a captured decode graph keeps its grid; the kernel cuts each
 * sequence's own keys into that many ranges, so any context length stays correct. When a
 * graph is captured, pass the largest maxSeqlenK it will serve, so that the split count
 * suits long contexts.
 *
 * An fp8 cache (LayerKvCache.dtype) runs the `*_fp8` twin of each kernel: the same launch, the
 * byte cache pointers, and the layer's kScale / vScale as two more parameters.
 */
import { PeregrineError } from '../../errors.js';
import { bytesPerElement, type AttentionMetadata, type AttentionParams, type LayerKvCache, type Tensor } from '../backend.js';
import type { DevicePtr } from './driver.js';
import type { OpContext } from './cuda-ops.js';
import type { CudaTensor } from './cuda-tensor.js';
import { floatTensor, i32Tensor, invalid, requireLength, requireRows, sameDtype } from './op-checks.js';

/** head sizes with tuned kernels (tensor-core prefill, split decode) */
export const HEAD_DIMS = [64, 80, 96, 128, 256] as const;
/** other head sizes up to this run on the simple generic kernel */
export const MAX_GENERIC_HEAD_DIM = 256;
const GENERIC_THREADS = 128;
/** keep in step with PGN_PREFILL_BN in kernels/attention_prefill.cu; a block of W warps serves 16 W query rows */
const prefillBn = (headDim: number): number => (headDim <= 128 ? 64 : 32);
/** prompts at least this long use 8-warp prefill blocks (fewer, larger tiles) */
const PREFILL_WIDE_MIN_QUERIES = 512;
/** PEREGRINE_PREFILL_WARPS=4|8 pins the prefill block size (benchmarks) */
const PREFILL_WARPS_OVERRIDE = Number(process.env.PEREGRINE_PREFILL_WARPS ?? 0);
const DECODE_THREADS = 128;
const HEADS_PER_BLOCK = [1, 2, 4, 8] as const;
/** keep in step with PGN_DECODE_MAX_SPLITS in kernels/attention_decode.cu (the combine's block holds one thread a split) */
const MAX_SPLITS = 128;
/**
 * fewer keys than this per split cost more in the combine than they save (H100, 8B shape, batch
 * 1, 2026-11-28: 16 keys a split, i.e. 32 splits for 512 keys, took 9.5 us a layer; 64 keys, 8 splits, 7.9)
 */
const MIN_KEYS_PER_SPLIT = 64;
/** decode blocks an SM holds: keep in step with PGN_DECODE_MIN_BLOCKS in kernels/attention_decode.cu */
const decodeBlocksPerSm = (hpb: number): number => (hpb <= 4 ? 4 : 3);

/**
 * The tensor-core decode kernel (kernels/attention_decode_tc.cu) for grouped-query attention: head sizes it is
 * built for, and the group sizes (query heads a KV head) it serves as its MMAs' 8 or 16 columns. By default it
 * runs where the batch gives it at least decodeTcMinWaves waves of blocks; PEREGRINE_DECODE_ATTN=tc wherever it
 * applies, =simt never (the CUDA-core kernel, attention_decode.cu). Measured 2026-11-28 (H200, 8B shape,
 * bench/decode-attn-ab.sh, the CUDA-core kernel -> this one, ms a step): context ~1000, FP8 KV cache, batch 64
 * 7.91 -> 6.77 (0.8 waves of its 5 blocks an SM), 128 11.25 -> 8.44, 256 18.98 -> 13.61; BF16 KV cache, batch
 * 64 8.28 -> 8.29 (1.3 waves of 3 an SM), 128 11.95 -> 10.67, 256 20.43 -> 17.40; FP8 weights, context ~160,
 * batch 1024: 26.55 -> 23.15 (FP8 KV), 27.26 -> 25.42 (BF16 KV).
 */
const DECODE_TC_HEAD_DIMS: readonly number[] = [64, 80, 96, 128];
const DECODE_TC_MIN_GROUP = 2;
const DECODE_TC_MAX_GROUP = 16;
const DECODE_TC_WARPS = 4;
/** an H100's largest block shared memory (227 KiB): its SM holds that and 1 KiB a block (A100 163 KiB, sm_89 99 KiB) */
const H100_BLOCK_SHARED_BYTES = 227 * 1024;
/** waves of its blocks from which the tensor-core kernel runs by default: fp8 caches from batch 64 of the 8B shape, 16-bit from 128 */
const decodeTcMinWaves = (fp8: boolean): number => (fp8 ? 0.75 : 2);

/** head columns of the tensor-core kernel's MMAs: 8 for groups up to 8 (kernels `_n1`), else 16 (`_n2`) */
export const decodeTcHeadBlocks = (group: number): 1 | 2 => (group <= 8 ? 1 : 2);
/**
 * attn_decode_tc blocks an SM holds: as its shared memory allows (an SM holds the largest block's opt-in shared
 * memory and 1 KiB a block: 228 KiB on an H100, 164 on an A100, 100 on sm_89), at most its launch bound (keep in
 * step with PGN_DECODE_TC in kernels/attention_decode_tc.cu: 5 for fp8 caches with groups up to 8, else 3)
 */
export const decodeTcBlocksPerSm = (sharedBytes: number, fp8: boolean, headBlocks: 1 | 2, maxSharedBytesPerBlock = H100_BLOCK_SHARED_BYTES): number =>
  Math.max(1, Math.min(fp8 && headBlocks === 1 ? 5 : 3, Math.floor((maxSharedBytesPerBlock + 1024) / (sharedBytes + 1024))));

/** Whether this decode step runs the tensor-core kernel (PEREGRINE_DECODE_ATTN=tc / simt / unset, read each call). */
export function decodeTcWanted(numSeqs: number, numHeads: number, numKvHeads: number, headDim: number, numSMs: number, blocksPerSm: number, fp8: boolean): boolean {
  const choice = process.env.PEREGRINE_DECODE_ATTN;
  if (choice === 'simt' || !decodeTcApplies(numHeads, numKvHeads, headDim)) return false;
  return choice === 'tc' || numSeqs * numKvHeads >= decodeTcMinWaves(fp8) * blocksPerSm * numSMs;
}

/** Whether the tensor-core decode kernel serves this head size and GQA group. */
export function decodeTcApplies(numHeads: number, numKvHeads: number, headDim: number): boolean {
  const group = numHeads / numKvHeads;
  return DECODE_TC_HEAD_DIMS.includes(headDim) && group >= DECODE_TC_MIN_GROUP && group <= DECODE_TC_MAX_GROUP;
}

/**
 * Dynamic shared memory of attn_decode_tc (keep in step with its layout): per warp 2 stages of K and V, rows of
 * D cache elements and 16 bytes of padding; at least the warps' f32 accumulators [4][8 headBlocks][D] that the
 * final merge reuses it for.
 */
export function decodeTcSharedBytes(headDim: number, elemBytes: number, fp8: boolean, headBlocks: 1 | 2): number {
  const rowBytes = fp8 ? headDim + 16 : (headDim + 8) * elemBytes;
  return Math.max(DECODE_TC_WARPS * 2 * 2 * 16 * rowBytes, DECODE_TC_WARPS * 8 * headBlocks * headDim * 4);
}

/** Device scratch for split decode: partial accumulators and (max, sum) pairs. */
export interface AttentionWorkspace {
  readonly ptr: DevicePtr;
  readonly sizeBytes: number;
}

export function prefillWarps(maxSeqlenQ: number): 4 | 8 {
  if (PREFILL_WARPS_OVERRIDE === 4 || PREFILL_WARPS_OVERRIDE === 8) return PREFILL_WARPS_OVERRIDE;
  return maxSeqlenQ >= PREFILL_WIDE_MIN_QUERIES ? 8 : 4;
}

/**
 * Q, K and V tiles of T; with an fp8 cache, also the byte staging of a K and a V tile. (V loads during the
 * scores, the next K during P V; a second K / V pair loading during the whole tile measured within spread,
 * H200 2026-11-28, and was removed.)
 */
export function prefillSharedBytes(headDim: number, elemBytes: number, warps: number, fp8 = false): number {
  const bn = prefillBn(headDim);
  return (16 * warps + 2 * bn) * (headDim + 8) * elemBytes + (fp8 ? 2 * bn * headDim : 0);
}

/**
 * The decode launch shape: heads per block, head groups per KV head, and key splits. No split
 * once the unsplit grid fills at least half the block slots: measured 2026-11-28 (H100, 8B
 * shape, batch 64, context ~160), 2 splits took 31.3 us a layer and 1 split 23.3.
 */
/** @param tcBlocksPerSm for the tensor-core kernel (which serves the whole group in a block): its blocks an SM; null for the CUDA-core kernel */
export function decodePlan(numSeqs: number, numHeads: number, numKvHeads: number, headDim: number, maxSeqlenK: number, window: number, numSMs: number, workspaceBytes: number, tcBlocksPerSm: number | null = null) {
  const group = numHeads / numKvHeads;
  const hpb = tcBlocksPerSm !== null ? group : HEADS_PER_BLOCK.find((h) => h >= Math.min(group, 8)) ?? 8;
  const headGroups = Math.ceil(group / hpb);
  const baseBlocks = numSeqs * numKvHeads * headGroups;
  const keys = window > 0 ? Math.min(maxSeqlenK, window) : maxSeqlenK;
  const slots = (tcBlocksPerSm ?? decodeBlocksPerSm(hpb)) * numSMs;
  let numSplits = baseBlocks * 2 > slots ? 1 : Math.min(Math.ceil(slots / baseBlocks), Math.ceil(keys / MIN_KEYS_PER_SPLIT), MAX_SPLITS);
  const bytesPerSplit = numSeqs * numHeads * (headDim + 2) * 4;
  numSplits = Math.max(1, Math.min(numSplits, Math.floor((workspaceBytes - 256) / bytesPerSplit)));
  return { hpb, headGroups, numSplits, partialOBytes: numSeqs * numHeads * numSplits * headDim * 4 };
}

/** What a decode step's attention launches: the kernel (tensor-core or CUDA-core), its split plan and shared memory. */
export interface DecodeLaunchShape {
  readonly numSeqs: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly maxSeqlenK: number;
  readonly window: number;
  readonly numSMs: number;
  readonly workspaceBytes: number;
  /** bytes of an activation element (bf16 / f16: 2) */
  readonly elemBytes: number;
  readonly fp8: boolean;
  readonly maxSharedBytesPerBlock: number;
}
export function decodeLaunch(d: DecodeLaunchShape) {
  const headBlocks = decodeTcHeadBlocks(d.numHeads / d.numKvHeads);
  const sharedBytes = decodeTcSharedBytes(d.headDim, d.elemBytes, d.fp8, headBlocks);
  const perSm = decodeTcBlocksPerSm(sharedBytes, d.fp8, headBlocks, d.maxSharedBytesPerBlock);
  const tc = decodeTcWanted(d.numSeqs, d.numHeads, d.numKvHeads, d.headDim, d.numSMs, perSm, d.fp8) && sharedBytes <= d.maxSharedBytesPerBlock;
  const plan = decodePlan(d.numSeqs, d.numHeads, d.numKvHeads, d.headDim, d.maxSeqlenK, d.window, d.numSMs, d.workspaceBytes, tc ? perSm : null);
  return { tc, plan, headBlocks, sharedBytes };
}

/** A layer's K and V on the device, checked against the activations `act` and rows of `kvWidth` elements. */
export interface DeviceKvCache {
  readonly k: CudaTensor;
  readonly v: CudaTensor;
  readonly fp8: boolean;
  /** cache rows (slots) both tensors hold */
  readonly numSlots: number;
  /** the fp8 kernels' trailing parameters (kScale, vScale); empty for an 'auto' cache */
  readonly scaleArgs: readonly number[];
}

export function deviceKvCache(cache: LayerKvCache, act: CudaTensor, kvWidth: number, op: string): DeviceKvCache {
  if ((cache.dtype ?? 'auto') === 'auto') {
    const k = floatTensor(cache.k, op, 'cache.k');
    const v = floatTensor(cache.v, op, 'cache.v');
    sameDtype(op, act, [k, 'cache.k'], [v, 'cache.v']);
    requireRows(k, 0, kvWidth, op, 'cache.k');
    requireRows(v, 0, kvWidth, op, 'cache.v');
    return { k, v, fp8: false, numSlots: kvWidth === 0 ? 0 : Math.floor(Math.min(k.numel, v.numel) / kvWidth), scaleArgs: [] };
  }
  if (cache.dtype !== 'fp8') throw invalid(op, `unknown KV cache dtype '${String(cache.dtype)}'`, { dtype: cache.dtype });
  const k = i32Tensor(cache.k, op, 'cache.k', 0);
  const v = i32Tensor(cache.v, op, 'cache.v', 0);
  requireRows(k, 0, kvWidth / 4, op, 'cache.k');
  requireRows(v, 0, kvWidth / 4, op, 'cache.v');
  const kScale = cache.kScale ?? 1, vScale = cache.vScale ?? 1;
  for (const [name, s] of [['kScale', kScale], ['vScale', vScale]] as const) {
    if (!(s > 0 && Number.isFinite(s))) throw invalid(op, `${name} must be finite and positive, got ${s}`, { [name]: s });
  }
  return { k, v, fp8: true, numSlots: Math.floor((4 * Math.min(k.numel, v.numel)) / kvWidth), scaleArgs: [kScale, vScale] };
}

export function attention(ctx: OpContext, ws: AttentionWorkspace, outT: Tensor, qkvT: Tensor, cache: LayerKvCache, meta: AttentionMetadata, p: AttentionParams): void {
  const op = 'attention';
  const { numHeads, numKvHeads, headDim, blockSize, scale } = p;
  if (numKvHeads <= 0 || numHeads % numKvHeads !== 0) throw invalid(op, `numHeads ${numHeads} is not a multiple of numKvHeads ${numKvHeads}`, { numHeads, numKvHeads });
  const tuned = (HEAD_DIMS as readonly number[]).includes(headDim);
  if (!tuned && !(Number.isInteger(headDim) && headDim > 0 && headDim <= MAX_GENERIC_HEAD_DIM)) {
    throw new PeregrineError('PGN_ERR_UNSUPPORTED_FEATURE', `the CUDA attention kernels support head sizes up to ${MAX_GENERIC_HEAD_DIM} (tuned: ${HEAD_DIMS.join(', ')}), not ${headDim}`, { headDim });
  }
  if (!(blockSize > 0)) throw invalid(op, `blockSize must be positive, got ${blockSize}`, { blockSize });
  const { numSeqs, numTokens, maxBlocksPerSeq } = meta;
  const qkv = floatTensor(qkvT, op, 'qkv', ['bf16', 'f16']);
  const out = floatTensor(outT, op, 'out');
  sameDtype(op, qkv, [out, 'out']);
  const kvWidth = numKvHeads * headDim;
  requireRows(qkv, numTokens, (numHeads + 2 * numKvHeads) * headDim, op, 'qkv');
  requireRows(out, numTokens, numHeads * headDim, op, 'out');
  const { k, v, fp8, scaleArgs } = deviceKvCache(cache, qkv, kvWidth, op);
  const cuQ = i32Tensor(meta.cuSeqlensQ, op, 'cuSeqlensQ', numSeqs + 1);
  const ctxLens = i32Tensor(meta.contextLens, op, 'contextLens', numSeqs);
  const tables = i32Tensor(meta.blockTables, op, 'blockTables', numSeqs * maxBlocksPerSeq);
  const slopes = p.alibiSlopes ? floatTensor(p.alibiSlopes, op, 'alibiSlopes', ['f32']) : null;
  if (slopes) requireLength(slopes, numHeads, op, 'alibiSlopes');
  const window = p.slidingWindow ?? 0;
  if (p.slidingWindow != null && !(window > 0)) throw invalid(op, `slidingWindow must be positive, got ${window}`, { window });
  const softcap = p.logitSoftcap ?? 0;
  if (p.logitSoftcap != null && !(softcap > 0)) throw invalid(op, `logitSoftcap must be positive, got ${softcap}`, { softcap });
  if (numSeqs === 0 || numTokens === 0) return;
  if (!tuned) {
    const dk = [1, 2, 4, 8].find((k) => 32 * k >= headDim)!;
    ctx.kernels.get(fp8 ? 'attn_generic_fp8' : 'attn_generic', `${qkv.dtype}_k${dk}`).launch([numTokens, numHeads], GENERIC_THREADS, 0, ctx.stream, [
      out.ptr, qkv.ptr, k.ptr, v.ptr, cuQ.ptr, ctxLens.ptr, tables.ptr, slopes?.ptr ?? null,
      numSeqs, numHeads, numKvHeads, headDim, maxBlocksPerSeq, blockSize, scale, window, softcap, ...scaleArgs,
    ]);
    return;
  }
  // a mixed step's leading decodes run on the decode kernel, the rest (prompt chunks) on the prefill kernel, which
  // would give each decode a block of 16-128 query rows per head
  const numDecode = meta.isDecode ? numSeqs : Math.max(0, Math.min(meta.numDecodeSeqs ?? 0, numSeqs));
  const tail = [slopes?.ptr ?? null, numHeads, numKvHeads, maxBlocksPerSeq, blockSize, scale, window, softcap];

  if (numDecode > 0) {
    const { tc, plan, headBlocks, sharedBytes: tcShared } = decodeLaunch({
      numSeqs: numDecode, numHeads, numKvHeads, headDim, maxSeqlenK: meta.maxSeqlenK, window, numSMs: ctx.numSMs,
      workspaceBytes: ws.sizeBytes, elemBytes: bytesPerElement(qkv.dtype), fp8, maxSharedBytesPerBlock: ctx.maxSharedBytesPerBlock,
    });
    const partialO = ws.ptr;
    const partialML = ws.ptr + Math.ceil(plan.partialOBytes / 256) * 256;
    const args = [out.ptr, partialO, partialML, qkv.ptr, k.ptr, v.ptr, cuQ.ptr, ctxLens.ptr, tables.ptr, ...tail, plan.numSplits, ...scaleArgs];
    if (tc) {
      ctx.kernels.get(fp8 ? 'attn_decode_tc_fp8' : 'attn_decode_tc', `${qkv.dtype}_d${headDim}_n${headBlocks}`).launch(
        [plan.numSplits, numKvHeads, numDecode], 32 * DECODE_TC_WARPS, tcShared, ctx.stream, args);
    } else {
      ctx.kernels.get(fp8 ? 'attn_decode_fp8' : 'attn_decode', `${qkv.dtype}_d${headDim}_h${plan.hpb}`).launch(
        [plan.numSplits, numKvHeads * plan.headGroups, numDecode], DECODE_THREADS, 0, ctx.stream, args);
    }
    if (plan.numSplits > 1) {
      const threads = Math.max(headDim, Math.ceil(plan.numSplits / 32) * 32);
      ctx.kernels.get('attn_decode_combine', qkv.dtype).launch([numHeads, numDecode], threads, 0, ctx.stream, [out.ptr, partialO, partialML, cuQ.ptr, numHeads, headDim, plan.numSplits]);
    }
  }
  if (numDecode === numSeqs) return;
  const warps = prefillWarps(meta.maxSeqlenQ);
  const shared = prefillSharedBytes(headDim, bytesPerElement(qkv.dtype), warps, fp8);
  // the sequences from numDecode on: their rows of cuSeqlensQ, contextLens and blockTables (i32)
  const seqArgs = [cuQ.ptr + 4 * numDecode, ctxLens.ptr + 4 * numDecode, tables.ptr + 4 * numDecode * maxBlocksPerSeq];
  ctx.kernels.get(fp8 ? 'attn_prefill_fp8' : 'attn_prefill', `${qkv.dtype}_d${headDim}_w${warps}`).launch(
    [Math.ceil(meta.maxSeqlenQ / (16 * warps)), numHeads, numSeqs - numDecode], 32 * warps, shared, ctx.stream,
    [out.ptr, qkv.ptr, k.ptr, v.ptr, ...seqArgs, ...tail, ...scaleArgs],
  );
}
