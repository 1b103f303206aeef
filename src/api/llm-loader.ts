/**
 * Loading for the library API (LLM.load / LLM.random / LLM.hostRanks): a checkpoint (quantized at
 * load when asked) or random weights, on one device or as a tensor-parallel group, and the engine
 * over it; what an LLM is made of.
 */
import type { Backend, KvCacheDType } from '../backends/backend.js';
import { createBackend } from '../backends/index.js';
import type { RandomQuantization } from '../bench/random-weights.js';
import { LLMEngine } from '../engine/llm-engine.js';
import { PeregrineError } from '../errors.js';
import { loadModelConfig, parseModelConfig, type HfConfig } from '../models/config.js';
import { loadGenerationConfig } from '../models/generation-config.js';
import { loadModel } from '../models/load-model.js';
import type { ModelWeights } from '../models/model-weights.js';
import type { ModelSpec } from '../models/spec.js';
import { TpGroup } from '../parallel/tp-group.js';
import { parseKvCacheDtype } from '../runner/kv-cache.js';
import { ModelRunner } from '../runner/model-runner.js';
import type { SamplingParamsInit } from '../sampling/index.js';
import { Tokenizer } from '../tokenizer/tokenizer.js';
import { parseQuantization, quantizedCheckpointDir } from '../weights/quant/quantize-on-load.js';
import { asyncSchedulingOf, asyncTensorParallelOf, defaultNumKvBlocks, kvCacheOptions, limits, multiNodeOf, type Limits, type LLMOptions } from './llm-options.js';

/** What an LLM is made of. */
export interface LoadedLLM {
  readonly spec: ModelSpec;
  readonly tokenizer: Tokenizer | null;
  /** the one-device runner, or the tensor-parallel group (tp > 1) */
  readonly executor: ModelRunner | TpGroup;
  readonly engine: LLMEngine;
  /** generation_config.json's sampling defaults */
  readonly defaults: Partial<SamplingParamsInit>;
  /** what the paged KV cache stores: 'auto' (the activation dtype) or 'fp8' (E4M3) */
  readonly kvCacheDtype: KvCacheDType;
}

/** Model config, generation defaults and tokenizer: what LLM.load reads besides the weights. */
async function loadModelExtras(dir: string, modelSpec: ModelSpec): Promise<{ spec: ModelSpec; tokenizer: Tokenizer | null; defaults: Partial<SamplingParamsInit> }> {
  const gen = loadGenerationConfig(dir);
  const tokenizer = Tokenizer.exists(dir) ? await Tokenizer.load(dir) : null;
  const eos = new Set<number>([...modelSpec.eosTokenIds, ...(gen?.eosTokenIds ?? [])]);
  if (tokenizer?.eosTokenId != null) eos.add(tokenizer.eosTokenId);
  const defaults: Partial<SamplingParamsInit> = {};
  if (gen?.temperature !== undefined) defaults.temperature = gen.temperature;
  if (gen?.topP !== undefined) defaults.topP = gen.topP;
  if (gen?.topK !== undefined) defaults.topK = gen.topK;
  if (gen?.repetitionPenalty !== undefined) defaults.repetitionPenalty = gen.repetitionPenalty;
  return { spec: { ...modelSpec, eosTokenIds: [...eos] }, tokenizer, defaults };
}


/**
 * Loads a Hugging Face checkpoint folder (config.json + safetensors, tokenizer optional).
 * @param options.tp tensor-parallel ranks (default 1)
 * @throws PeregrineError PGN_ERR_INVALID_ARGUMENT when tp does not split the model, maxModelLen
 *   is too long or kvCacheDtype is unknown, the loader's errors (bad checkpoint, missing device), PGN_ERR_OUT_OF_MEMORY
 *   when the KV cache cannot hold one sequence of maxModelLen
 */
export async function loadCheckpoint(dir: string, options: LLMOptions = {}): Promise<LoadedLLM> {
  parseKvCacheDtype(options.kvCacheDtype); // a bad value fails before the model loads
  checkNodeZero(options);
  dir = await checkpointToLoad(dir, options);
  const tp = options.tp ?? 1;
  if (tp !== 1) return loadTensorParallel(dir, tp, options);
  const backend = await createBackend(options.device ?? 'cpu', { deviceId: options.deviceId });
  try {
    const loaded = loadModel(dir, backend, options.onLoadProgress);
    const { spec, tokenizer, defaults } = await loadModelExtras(dir, loaded.spec);
    return await assemble(backend, spec, loaded.weights, tokenizer, defaults, options, dir);
  } catch (e) {
    backend.dispose();
    throw e;
  }
}

/** Starts the tensor-parallel group (rank 0 here) and the engine over it. */
async function loadTensorParallel(dir: string, tp: number, options: LLMOptions): Promise<LoadedLLM> {
  const { spec, tokenizer, defaults } = await loadModelExtras(dir, loadModelConfig(dir).spec);
  return startTensorParallel({ modelDir: dir }, spec, tokenizer, defaults, dir, tp, options);
}


/**
 * A model of a real shape with random weights and no tokenizer, for benchmarks.
 * @param config an HF config.json object (see src/bench/shapes.ts)
 * @param options.tp > 1: every rank makes its own shard (the same model tp 1 makes from `seed`)
 * @param quantization 'fp8': the layers' linears in E4M3 with per-tensor scales
 */
export async function loadRandom(config: HfConfig, options: LLMOptions = {}, seed = 0, quantization: RandomQuantization = null): Promise<LoadedLLM> {
  checkNodeZero(options);
  if ((options.tp ?? 1) !== 1) return randomTensorParallel(config, options, seed, quantization);
  parseKvCacheDtype(options.kvCacheDtype);
  const backend = await createBackend(options.device ?? 'cpu', { deviceId: options.deviceId });
  try {
    const spec = parseModelConfig(config);
    const { randomModelWeights } = await import('../bench/random-weights.js');
    return await assemble(backend, spec, randomModelWeights(spec, backend, { seed, quantization }), null, {}, options, null);
  } catch (e) {
    backend.dispose();
    throw e;
  }
}

/** Random weights over a tensor-parallel group: every rank makes its own shard, no checkpoint (benchmarks). */
async function randomTensorParallel(config: HfConfig, options: LLMOptions, seed: number, quantization: RandomQuantization): Promise<LoadedLLM> {
  return startTensorParallel({ randomModel: { config, seed, quantization } }, parseModelConfig(config), null, {}, null, options.tp ?? 1, options);
}

/** Ranks 1..tp-1 started (here, or on other nodes) and rank 0 in this process, over a checkpoint or random weights. */
async function startTensorParallel(
  source: { modelDir: string } | { randomModel: { config: HfConfig; seed: number; quantization: RandomQuantization } },
  spec: ModelSpec, tokenizer: Tokenizer | null, defaults: Partial<SamplingParamsInit>, dir: string | null, tp: number, options: LLMOptions,
): Promise<LoadedLLM> {
  const lim = limits(spec, options);
  const kvCache = kvCacheOptions(options, dir, spec.numLayers);
  const group = await TpGroup.start({
    ...source,
    tp,
    device: options.device ?? 'cpu',
    deviceIds: options.deviceIds,
    nodes: multiNodeOf(options),
    eosTokenIds: spec.eosTokenIds,
    onLoadProgress: options.onLoadProgress,
    runner: {
      ...lim, kvCache, broadcastSampledIds: asyncTensorParallelOf(options, options.device ?? 'cpu'),
      numBlocks: options.numKvBlocks ?? ((backend, rankSpec) => defaultNumKvBlocks(backend, rankSpec, lim, options, tp)),
    },
  });
  return { spec, tokenizer, executor: group, engine: makeEngine(group, tokenizer, lim, options), defaults, kvCacheDtype: kvCache.dtype ?? 'auto' };
}


/**
 * Multi-node, on node K > 0 (options.nodeRank): hosts this node's tp / nnodes ranks for node 0's
 * LLM (same tp, nnodes, masterAddr, masterPort) and resolves once node 0 has closed it.
 * @param dir this node's copy of the checkpoint (null: node 0's path as sent, or its random weights)
 * @throws PeregrineError PGN_ERR_INVALID_ARGUMENT for a bad layout or when node 0 refuses this
 *   node, PGN_ERR_ENGINE_DEAD when node 0 does not answer within nodeTimeoutMs or goes away mid-run
 * @example
 * await LLM.hostRanks('/models/llama-70b', { device: 'cuda', tp: 16, nnodes: 2, nodeRank: 1, masterAddr: '10.0.0.1' });
 */
export async function hostRanks(dir: string | null, options: LLMOptions, log?: (line: string) => void): Promise<void> {
  const nodes = multiNodeOf(options);
  if (!nodes || nodes.nodeRank === 0) throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', 'LLM.hostRanks is for nodes 1 .. nnodes-1 (nodeRank > 0); node 0 calls LLM.load', { param: 'node_rank' });
  const { runNodeHost } = await import('../parallel/node-host.js');
  const modelDir = dir === null ? undefined : await checkpointToLoad(dir, options);
  await runNodeHost({ nodes, tp: options.tp ?? 1, modelDir, deviceIds: options.deviceIds, log });
}

/** `dir`, or with options.quantization its quantized build (cached; made on first use). */
async function checkpointToLoad(dir: string, options: LLMOptions): Promise<string> {
  if (options.quantization === undefined) return dir;
  const kind = parseQuantization(options.quantization);
  return quantizedCheckpointDir(dir, { kind }, { cacheDir: options.quantizationCacheDir, onProgress: options.onQuantizeProgress });
}

/** @param dir the checkpoint (fp8 KV scales are read from it); null for random weights */
async function assemble(backend: Backend, spec: ModelSpec, weights: ModelWeights, tokenizer: Tokenizer | null, defaults: Partial<SamplingParamsInit>, options: LLMOptions, dir: string | null): Promise<LoadedLLM> {
  const lim = limits(spec, options);
  const kvCache = kvCacheOptions(options, dir, spec.numLayers);
  const numKvBlocks = options.numKvBlocks ?? defaultNumKvBlocks(backend, spec, lim, options);
  const runner = new ModelRunner(backend, spec, weights, { ...lim, numBlocks: numKvBlocks, kvCache });
  if ((options.captureGraphsAtStart ?? true) && process.env.PEREGRINE_CAPTURE_GRAPHS_AT_START !== '0') {
    try {
      await runner.captureDecodeGraphs(); // CUDA, one rank; nothing elsewhere
    } catch (e) {
      runner.dispose();
      throw e;
    }
  }
  return { spec, tokenizer, executor: runner, engine: makeEngine(runner, tokenizer, lim, options), defaults, kvCacheDtype: runner.kvCache.dtype };
}

function makeEngine(executor: ModelRunner | TpGroup, tokenizer: Tokenizer | null, lim: Limits, options: LLMOptions): LLMEngine {
  return new LLMEngine(executor, {
    tokenizer,
    maxNumSeqs: lim.maxNumSeqs,
    maxNumBatchedTokens: lim.maxNumBatchedTokens,
    enablePrefixCaching: options.enablePrefixCaching ?? true,
    maxWaiting: options.maxWaiting,
    asyncScheduling: asyncSchedulingOf(options, executor.backend.device),
  });
}

/** LLM.load / LLM.random run node 0 only: other nodes host ranks (LLM.hostRanks). */
function checkNodeZero(options: LLMOptions): void {
  const nodes = multiNodeOf(options);
  if (nodes && nodes.nodeRank !== 0) {
    throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `node ${nodes.nodeRank} of ${nodes.nnodes} does not load the LLM: it hosts ranks for node 0 (LLM.hostRanks, or the same peregrine command)`, { param: 'node_rank' });
  }
}
