/** Options of LLM.load, the engine limits they give, and the KV pool sizing. */
import type { Backend, KvCacheDType } from '../backends/backend.js';
import type { DeviceName } from '../backends/index.js';
import { PeregrineError } from '../errors.js';
import type { ModelSpec } from '../models/spec.js';
import { checkMultiNode, DEFAULT_MASTER_ADDR, DEFAULT_MASTER_PORT, type MultiNode } from '../parallel/node-protocol.js';
import { DEFAULT_BLOCK_SIZE, KvCachePool, parseKvCacheDtype, type KvCacheOptions } from '../runner/kv-cache.js';
import { DEFAULT_PROMPT_LOGPROB_ROWS } from '../runner/model-runner.js';
import type { BuildProgress } from '../weights/quant/build.js';
import { readKvCacheScalesInDir } from '../weights/quant/kv-scales.js';
import type { QuantKind } from '../weights/quant/types.js';

export interface LLMOptions {
  /** 'cpu' (default) or 'cuda' */
  readonly device?: DeviceName;
  /** the GPU with tp 1 (default 0) */
  readonly deviceId?: number;
  /**
   * tensor-parallel ranks (default 1): each holds 1/tp of the heads and MLP. It must divide the
   * attention heads, the KV heads (or be a multiple of them) and the MLP width, else
   * PGN_ERR_INVALID_ARGUMENT. CPU: worker threads; CUDA: one process per GPU over NCCL.
   */
  readonly tp?: number;
  /** the GPU of each rank with tp > 1 (default 0 .. tp-1); multi-node: of this node's ranks (default 0 .. tp/nnodes-1) */
  readonly deviceIds?: readonly number[];
  /**
   * Multi-node tensor parallelism (CUDA only): nodes in the group (default 1). tp must be a multiple;
   * every node runs tp / nnodes ranks, one GPU each. Node 0 (nodeRank 0) loads the LLM and owns
   * the scheduler; every other node runs LLM.hostRanks with the same options but its nodeRank.
   */
  readonly nnodes?: number;
  /** this node's place in 0 .. nnodes-1 (default 0) */
  readonly nodeRank?: number;
  /** node 0's address, which it listens on and the other nodes connect to (default 127.0.0.1) */
  readonly masterAddr?: string;
  /** node 0's rendezvous port (default 29500) */
  readonly masterPort?: number;
  /** how long node 0 waits for the other nodes to join, and they for node 0 (default 5 min) */
  readonly nodeTimeoutMs?: number;
  /** longest prompt + output; default: the model's max_position_embeddings */
  readonly maxModelLen?: number;
  /** most sequences in one step (default 256 on CUDA, 64 on the CPU) */
  readonly maxNumSeqs?: number;
  /** token budget of one step (default 8192 on CUDA, 2048 on the CPU; at least maxNumSeqs) */
  readonly maxNumBatchedTokens?: number;
  /** tokens per KV block (default 16) */
  readonly blockSize?: number;
  /** KV blocks in the pool (every rank's, with tp > 1); default: from kvCacheMemoryBytes (CPU) or gpuMemoryUtilization (CUDA) */
  readonly numKvBlocks?: number;
  /** CPU KV budget in bytes, all ranks together (default 256 MiB) */
  readonly kvCacheMemoryBytes?: number;
  /** fraction of the GPU memory left after weights and activations given to the KV pool (default 0.9) */
  readonly gpuMemoryUtilization?: number;
  /**
   * KV cache storage: 'auto' (default, the activation dtype) or 'fp8' (E4M3, 1 byte an element: twice
   * the blocks for the same memory; per-layer k/v scales from the checkpoint where it has them, else
   * 1.0). Another value is PGN_ERR_INVALID_ARGUMENT.
   */
  readonly kvCacheDtype?: KvCacheDType;
  readonly enablePrefixCaching?: boolean;
  /**
   * Async scheduling: the engine schedules and launches step n+1 while the device runs step n
   * (default: on for CUDA, off on the CPU; env PEREGRINE_ASYNC_SCHEDULING=0 turns it off, =1 on
   * where not set here). Steps that need the token history on the host (penalties, min_tokens,
   * prompt logprobs) and tensor parallelism run synchronously either way.
   */
  readonly asyncScheduling?: boolean;
  /**
   * CUDA, one rank: capture the decode graph of every batch size (at contexts up to 512 tokens) while
   * loading, so serving never stalls on those captures (default true; false: each on first use, as
   * longer contexts and tensor-parallel ranks always are). Env PEREGRINE_CAPTURE_GRAPHS_AT_START=0 also
   * turns it off.
   */
  readonly captureGraphsAtStart?: boolean;
  /** most requests waiting for admission before addRequest fails with PGN_ERR_QUEUE_FULL */
  readonly maxWaiting?: number;
  readonly onLoadProgress?: (loaded: number, total: number) => void;
  /**
   * Quantize a plain (BF16 / F16 / F32) checkpoint at load: 'fp8' (E4M3 weights, dynamic per-token
   * FP8 activations), 'int8' (weight-only, per channel) or 'int4' (weight-only, groups of 128).
   * Done once per machine: the `peregrine build` of the checkpoint is cached (see
   * weights/quant/quantize-on-load.ts) and reused by later loads. A checkpoint already quantized
   * the same way loads as it is; another way is PGN_ERR_INVALID_ARGUMENT.
   */
  readonly quantization?: QuantKind;
  /** where quantized builds are cached (default $PEREGRINE_CACHE_DIR or ~/.cache/peregrine) */
  readonly quantizationCacheDir?: string;
  /** progress of a quantization build (the first load of a checkpoint with `quantization`) */
  readonly onQuantizeProgress?: (p: BuildProgress) => void;
}

const DEFAULT_CPU_KV_BYTES = 256 * 1024 * 1024;
const DEFAULT_GPU_MEMORY_UTILIZATION = 0.9;

export interface Limits {
  readonly blockSize: number;
  readonly maxModelLen: number;
  readonly maxNumSeqs: number;
  readonly maxNumBatchedTokens: number;
}

/**
 * KV blocks for the pool. CPU: a byte budget, split evenly over the tp ranks. GPU: a fraction
 * of the device memory still free after the weights, less the step's activations. Never more
 * than every sequence at full length needs, never less than one full-length sequence.
 * @param spec what one rank runs (its shardSpec with tp > 1: its KV heads and MLP width);
 *   with tp > 1 `backend` is rank 0's, measured once its shard is loaded, and stands for every
 *   rank (the same shard size on like GPUs)
 */
export function defaultNumKvBlocks(backend: Backend, spec: ModelSpec, lim: Limits, options: LLMOptions, tp = 1): number {
  const perBlock = KvCachePool.bytesPerBlock(spec, lim.blockSize, backend, parseKvCacheDtype(options.kvCacheDtype));
  const maxBlocksPerSeq = Math.ceil(lim.maxModelLen / lim.blockSize);
  let budget = (options.kvCacheMemoryBytes ?? DEFAULT_CPU_KV_BYTES) / tp;
  if (backend.memoryInfo) {
    const { freeBytes } = backend.memoryInfo();
    const H = spec.hiddenSize, T = lim.maxNumBatchedTokens;
    const rowElems = 3 * H + (spec.numHeads + 2 * spec.numKvHeads) * spec.headDim + spec.numHeads * spec.headDim + 3 * spec.intermediateSize;
    // f32 [rows, vocab]: the logits (maxNumSeqs rows + the prompt-logprob rows) and the GPU sampler's scratch
    const logitsRows = 2 * lim.maxNumSeqs + DEFAULT_PROMPT_LOGPROB_ROWS;
    const activationBytes = T * rowElems * 4 + logitsRows * spec.vocabSize * 4 + spec.maxPositionEmbeddings * (spec.rope?.rotaryDim ?? 0) * 4;
    budget = (freeBytes - activationBytes) * (options.gpuMemoryUtilization ?? DEFAULT_GPU_MEMORY_UTILIZATION);
  }
  const fit = Math.floor(budget / perBlock);
  if (fit < maxBlocksPerSeq && backend.memoryInfo) {
    throw new PeregrineError('PGN_ERR_OUT_OF_MEMORY', `the KV cache would hold ${fit} blocks of ${lim.blockSize} tokens, fewer than one sequence of maxModelLen ${lim.maxModelLen} needs (${maxBlocksPerSeq}); lower maxModelLen or raise gpuMemoryUtilization`);
  }
  return Math.max(maxBlocksPerSeq, Math.min(lim.maxNumSeqs * maxBlocksPerSeq, fit));
}

/** Engine limits by default: a GPU batches like vLLM's defaults (256 sequences, 8192 tokens a step); the CPU small. */
export const GPU_DEFAULT_MAX_NUM_SEQS = 256;
export const GPU_DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192;
export const CPU_DEFAULT_MAX_NUM_SEQS = 64;
export const CPU_DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048;

/** The engine limits of `options` for `spec` (maxModelLen checked against the model's context). */
export function limits(spec: ModelSpec, options: LLMOptions): Limits {
  const maxModelLen = options.maxModelLen ?? spec.maxPositionEmbeddings;
  if (maxModelLen > spec.maxPositionEmbeddings) {
    throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `maxModelLen ${maxModelLen} exceeds the model's max_position_embeddings ${spec.maxPositionEmbeddings}`, { param: 'max_model_len' });
  }
  const gpu = (options.device ?? 'cpu') === 'cuda';
  const maxNumSeqs = options.maxNumSeqs ?? (gpu ? GPU_DEFAULT_MAX_NUM_SEQS : CPU_DEFAULT_MAX_NUM_SEQS);
  const tokens = options.maxNumBatchedTokens ?? (gpu ? GPU_DEFAULT_MAX_NUM_BATCHED_TOKENS : CPU_DEFAULT_MAX_NUM_BATCHED_TOKENS);
  return { maxModelLen, blockSize: options.blockSize ?? DEFAULT_BLOCK_SIZE, maxNumSeqs, maxNumBatchedTokens: Math.max(tokens, maxNumSeqs) };
}

/**
 * The KV cache of `options`: its dtype and, for fp8, the per-layer scales of the checkpoint in `dir`
 * (null `dir`: random weights, scales 1.0).
 * @throws PeregrineError PGN_ERR_INVALID_ARGUMENT for an unknown kvCacheDtype or a bad scale tensor
 */
export function kvCacheOptions(options: LLMOptions, dir: string | null, numLayers: number): KvCacheOptions {
  const dtype = parseKvCacheDtype(options.kvCacheDtype);
  return { dtype, scales: dtype === 'fp8' && dir !== null ? readKvCacheScalesInDir(dir, numLayers) : null };
}

/**
 * Tensor parallel: whether the group launches steps ahead (every rank then takes rank 0's sampled
 * ids through a broadcast). As for one device (asyncSchedulingOf): on for CUDA, where it was measured
 * (8B tp 2 on 2 H200s, 512 x 128/128 offline: 17,274 -> 23,451 output tok/s), off on the CPU unless asked.
 */
export function asyncTensorParallelOf(options: LLMOptions, device: DeviceName): boolean {
  return asyncSchedulingOf(options, device);
}

/** Whether the engine schedules ahead of the device: `options.asyncScheduling`, else the env's =1 or =0, else on for CUDA. */
export function asyncSchedulingOf(options: LLMOptions, device: DeviceName): boolean {
  const env = process.env.PEREGRINE_ASYNC_SCHEDULING;
  if (env === '0') return false;
  return options.asyncScheduling ?? (env === '1' || device === 'cuda');
}

/**
 * The multi-node layout of `options`, checked; undefined on one node.
 * @throws PeregrineError PGN_ERR_INVALID_ARGUMENT for nnodes > 1 off CUDA, tp not a multiple of
 *   nnodes, a node rank out of range or a bad port
 */
export function multiNodeOf(options: LLMOptions): MultiNode | undefined {
  const nnodes = options.nnodes ?? 1;
  if (nnodes === 1 && (options.nodeRank ?? 0) === 0) return undefined;
  const nodes: MultiNode = {
    nnodes,
    nodeRank: options.nodeRank ?? 0,
    masterAddr: options.masterAddr ?? DEFAULT_MASTER_ADDR,
    masterPort: options.masterPort ?? DEFAULT_MASTER_PORT,
    timeoutMs: options.nodeTimeoutMs,
  };
  checkMultiNode(nodes, options.tp ?? 1);
  if ((options.device ?? 'cpu') !== 'cuda') {
    throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `multi-node tensor parallelism (nnodes ${nnodes}) needs device 'cuda' (NCCL between nodes); the CPU backend's ranks are threads of one process`, { param: 'device' });
  }
  return nodes;
}
