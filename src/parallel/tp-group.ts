/**
 * A tensor-parallel group driven from rank 0, which owns the scheduler: each step's
 * ForwardBatch goes to the other ranks, every rank runs the same forward on its shard
 * (all-reducing and all-gathering through the communicator), and rank 0 samples.
 * It is a ModelExecutor, so the engine runs over it unchanged.
 *
 * CPU: ranks 1..tp-1 are worker threads over a shared-memory communicator (the CI path).
 * CUDA: one process per GPU over NCCL (small all-reduces on the custom one-shot kernel where the
 * GPUs can map each other's memory: cuda-communicator.ts), device r for rank r unless told otherwise.
 * Weights come from a checkpoint folder, or each rank makes its shard of a random model (benchmarks).
 * Multi-node (`nodes`, CUDA only): this is node 0, hosting ranks 0 .. tp/nnodes-1; the other ranks
 * run on rank hosts (node-host.ts) that joined at nodes.masterAddr:masterPort, reached over TCP
 * (node-links.ts), the NCCL id handed over by the rendezvous; a node that drops is a dead rank.
 * A rank that dies turns the next (or the current) step into PGN_ERR_ENGINE_DEAD; nothing hangs.
 *
 * @example
 * const group = await TpGroup.start({ modelDir, tp: 2, runner: { numBlocks: 256, blockSize: 16, maxModelLen: 2048, maxNumBatchedTokens: 512, maxNumSeqs: 32 } });
 * const engine = new LLMEngine(group);
 * ...
 * await group.dispose();
 */
import type { Backend } from '../backends/backend.js';
import { createBackend, type DeviceName } from '../backends/index.js';
import type { ExecuteResults, LaunchedStep, ModelExecutor } from '../engine/executor.js';
import { isPeregrineError, PeregrineError } from '../errors.js';
import type { HfConfig } from '../models/config.js';
import type { RandomQuantization } from '../bench/random-weights.js';
import type { LoadProgress } from '../models/model-weights.js';
import type { ModelSpec } from '../models/spec.js';
import type { ForwardBatch } from '../runner/forward-batch.js';
import { buildForwardBatch } from '../runner/input-builder.js';
import { DEFAULT_PROMPT_LOGPROB_ROWS, ModelRunner, samplingEntries, withPromptLogprobRows, type RunnerConfig, type RunnerEntry } from '../runner/model-runner.js';
import type { ModelWeights } from '../models/model-weights.js';
import type { Communicator } from './communicator.js';
import { connect } from './connect.js';
import { createCpuCommShared, DEFAULT_COLLECTIVE_TIMEOUT_MS } from './cpu-communicator.js';
import { loadShard, sourceSpec } from './load-shard.js';
import { checkTensorParallel } from './sharding.js';
import { NodeLinks } from './node-links.js';
import { checkMultiNode, ranksPerNode, type MultiNode } from './node-protocol.js';
import type { ModelSource, TpCommInit } from './tp-protocol.js';
import { TpPeers } from './tp-peers.js';

export interface TpGroupOptions {
  /** the checkpoint folder every rank loads its shard from; or `randomModel` */
  readonly modelDir?: string;
  /** benchmarks: every rank makes its shard of this config's model with random weights (bench/random-weights.ts) */
  readonly randomModel?: { readonly config: HfConfig; readonly seed?: number; readonly quantization?: RandomQuantization };
  /** ranks in the group; must split the model's heads (checkTensorParallel) */
  readonly tp: number;
  /** 'cpu' (default): worker threads; 'cuda': one process per GPU over NCCL */
  readonly device?: DeviceName;
  /** GPU of each rank (default: rank r on device r); multi-node: of this node's ranks (default 0 .. tp/nnodes-1) */
  readonly deviceIds?: readonly number[];
  /** multi-node (CUDA): this must be node 0; the other nodes run runNodeHost with the same tp and layout */
  readonly nodes?: MultiNode;
  readonly runner: TpRunnerConfig;
  /** tokens that end generation (default: the model config's) */
  readonly eosTokenIds?: readonly number[];
  /** rank 0's weight loading */
  readonly onLoadProgress?: LoadProgress;
  /** CPU: how long a rank waits for the others at one collective before the group is declared dead (default 10 min) */
  readonly collectiveTimeoutMs?: number;
  /** fault injection for tests: rank `rank` exits when step `step` (0-based) reaches it; step -1: before joining the communicator */
  readonly exitAtStep?: { readonly rank: number; readonly step: number };
}

/** Every rank's runner config; numBlocks may be sized on rank 0 once its shard is loaded (e.g. from free GPU memory). */
export type TpRunnerConfig = Omit<RunnerConfig, 'numBlocks'> & {
  readonly numBlocks: number | ((backend: Backend, rankSpec: ModelSpec) => number);
};

export class TpGroup implements ModelExecutor {
  private failure: PeregrineError | null = null;

  private constructor(
    /** the model's spec, unsharded */
    readonly spec: ModelSpec,
    readonly eosTokenIds: readonly number[],
    /** rank 0's backend */
    readonly backend: Backend,
    private readonly runner: ModelRunner,
    private readonly comm: Communicator,
    private readonly peers: TpPeers,
    private readonly links: NodeLinks | null,
  ) {
    peers.onDeath((e) => comm.abort(e.message));
  }

  /**
   * Starts ranks 1..tp-1, loads rank 0's shard here meanwhile, then joins the communicator.
   * @throws PeregrineError PGN_ERR_INVALID_ARGUMENT when tp does not split the model, a worker's
   *   load error with its code, PGN_ERR_ENGINE_DEAD when a worker dies while starting
   */
  static async start(opts: TpGroupOptions): Promise<TpGroup> {
    const { tp, runner: tpConfig } = opts;
    const model = modelSource(opts);
    const device = opts.device ?? 'cpu';
    const nodes = multiNode(opts);
    const numLocal = nodes ? ranksPerNode(tp, nodes.nnodes) : tp;
    const deviceIds = opts.deviceIds ?? Array.from({ length: numLocal }, (_, r) => r);
    const spec = sourceSpec(model);
    checkTensorParallel(spec, tp);
    if (deviceIds.length < numLocal) throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `${numLocal} ranks need ${numLocal} device ids, got [${deviceIds.join(', ')}]`, { param: 'deviceIds' });
    const comm: TpCommInit = device === 'cpu'
      ? { kind: 'cpu', shared: createCpuCommShared(tp, collectiveCapacity(spec, tp, tpConfig)), timeoutMs: opts.collectiveTimeoutMs ?? DEFAULT_COLLECTIVE_TIMEOUT_MS }
      : { kind: 'nccl', uniqueId: [...(await import('./nccl.js')).ncclUniqueId()] };
    const links = nodes && comm.kind === 'nccl' ? await NodeLinks.accept(nodes, tp, Uint8Array.from(comm.uniqueId)) : null;
    const inits = Array.from({ length: tp - 1 }, (_, i) => i + 1).map((rank) => ({
      model, tp, rank, device, deviceId: deviceIds[rank % numLocal]!, comm, // a remote node puts its ranks on its own GPUs
      exitAtStep: opts.exitAtStep?.rank === rank ? opts.exitAtStep.step : undefined,
    }));
    const peers = new TpPeers(inits, device === 'cpu' ? 'thread' : 'process', { remote: links ?? undefined });
    let backend: Backend | null = null;
    try {
      backend = await createBackend(device, { deviceId: deviceIds[0] });
      const shard = loadShard(model, backend, tp, 0, opts.onLoadProgress);
      await peers.waitAll('loaded');
      const { numBlocks } = tpConfig;
      const config: RunnerConfig = { ...tpConfig, numBlocks: typeof numBlocks === 'number' ? numBlocks : numBlocks(backend, shard.rankSpec) };
      await peers.send({ t: 'connect', runner: config });
      // a rank that dies before it joins would leave NCCL's init waiting for it: stop waiting then
      const rankDied = new Promise<never>((_, reject) => peers.onDeath(reject));
      rankDied.catch(() => {});
      const communicator = await connect(comm, 0, tp, backend, rankDied);
      await peers.waitAll('ready');
      const runner = new ModelRunner(backend, shard.rankSpec, shard.weights, config, communicator);
      return new TpGroup(spec, opts.eosTokenIds ?? spec.eosTokenIds, backend, runner, communicator, peers, links);
    } catch (e) {
      await peers.stop();
      links?.close();
      backend?.dispose();
      throw e;
    }
  }

  get tp(): number { return this.comm.size; }
  get blockSize(): number { return this.runner.config.blockSize; }
  get numBlocks(): number { return this.runner.config.numBlocks; }
  get maxModelLen(): number { return this.runner.config.maxModelLen; }
  get maxBlocksPerSeq(): number { return this.runner.maxBlocksPerSeq; }
  /** logits rows a step has for prompt logprobs beyond its sampling rows (every rank's runner has the same config) */
  get maxNumPromptLogprobRows(): number { return this.runner.maxNumPromptLogprobRows; }
  /** every rank's runner config (rank 0's: the same on all ranks) */
  get config(): RunnerConfig { return this.runner.config; }
  /** rank 0's weight shard (benchmarks count the bytes a step reads; every rank's shard has the same shapes) */
  get rankWeights(): ModelWeights { return this.runner.weights; }

  /** why the group cannot run, or null */
  get dead(): PeregrineError | null {
    return this.failure ?? this.peers.dead;
  }

  /** Runs one batch on every rank; f32 logits [logitsIndices.length, vocab]. */
  async forward(fb: ForwardBatch): Promise<Float32Array> {
    return this.onAllRanks(fb, () => this.runner.forward(fb));
  }

  /** Forward on every rank + sampling on rank 0 (ModelExecutor); on the device where rank 0's runner samples there. */
  async execute(batch: { readonly entries: readonly RunnerEntry[] }): Promise<ExecuteResults> {
    const entries = batch.entries;
    if (entries.length === 0) return [];
    if (this.dead) throw this.dead;
    const samples = samplingEntries(entries);
    // the prompt-logprob rows go to every rank too: the vocab-parallel head all-gathers each row
    const fb = withPromptLogprobRows(buildForwardBatch(entries, this.blockSize, this.maxBlocksPerSeq, samples), entries);
    return this.onAllRanks(fb, () => this.runner.executeForward(fb, entries, samples));
  }

  /**
   * Whether the engine may launch this batch ahead of the previous step's results (async
   * scheduling): only when the group was started with runner.broadcastSampledIds (every rank then
   * takes rank 0's sampled ids on the device), and under rank 0's runner's own conditions.
   */
  canLaunch(batch: { readonly entries: readonly RunnerEntry[] }): boolean {
    return this.runner.config.broadcastSampledIds === true && this.runner.canLaunch(batch);
  }

  /** Queues one step on every rank without waiting for it (ModelExecutor.launch); collect() gives rank 0's samples. */
  async launch(batch: { readonly entries: readonly RunnerEntry[] }): Promise<LaunchedStep> {
    if (this.dead) throw this.dead;
    const entries = batch.entries;
    const samples = samplingEntries(entries);
    const fb = buildForwardBatch(entries, this.blockSize, this.maxBlocksPerSeq, samples);
    const step = await this.onAllRanks(fb, () => this.runner.launchForward(fb, entries, samples), false);
    return { collect: () => this.guarded(() => step.collect()) };
  }

  /** Ends rank `rank` abruptly, as a crash would (fault drills and tests); resolves once it is gone. */
  kill(rank: number): Promise<void> {
    return this.peers.kill(rank);
  }

  /** Stops the workers and frees rank 0's memory. */
  async dispose(): Promise<void> {
    await this.peers.requestStop(); // the workers leave the communicator as this rank does
    this.runner.dispose();
    this.comm.dispose();
    await this.peers.exited();
    this.links?.close();
    this.backend.dispose();
  }

  /** Sends `fb` to the other ranks and runs rank 0's part of the step (`guarded`). */
  private onAllRanks<T>(fb: ForwardBatch, run: () => Promise<T>, checkAfter = true): Promise<T> {
    return this.guarded(() => {
      void this.peers.send({ t: 'step', fb });
      return run();
    }, checkAfter);
  }

  /**
   * Runs rank 0's part unless the group is dead; a failure there ends the group (`fail`). With checkAfter,
   * a group that died meanwhile fails the call too: NCCL returns early once aborted, so results are not whole.
   */
  private async guarded<T>(run: () => Promise<T>, checkAfter = true): Promise<T> {
    if (this.dead) throw this.dead;
    let out: T;
    try {
      out = await run();
    } catch (e) {
      throw this.fail(e);
    }
    if (checkAfter && this.dead) throw this.dead;
    return out;
  }

  /** Rank 0 failed mid-step: the others may wait at a collective, so the group is over. */
  private fail(e: unknown): PeregrineError {
    const err = this.dead ?? (isPeregrineError(e, 'PGN_ERR_ENGINE_DEAD') ? e
      : new PeregrineError('PGN_ERR_ENGINE_DEAD', `tensor-parallel rank 0 failed mid-step: ${(e as Error)?.message ?? String(e)}`, {}, { cause: e }));
    this.failure ??= err;
    this.comm.abort(err.message);
    return err;
  }
}

function modelSource(opts: TpGroupOptions): ModelSource {
  if ((opts.modelDir === undefined) === (opts.randomModel === undefined)) {
    throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', 'a tensor-parallel group needs exactly one of modelDir and randomModel', { param: 'modelDir' });
  }
  if (opts.modelDir !== undefined) return { kind: 'dir', dir: opts.modelDir };
  const r = opts.randomModel!;
  return { kind: 'random', config: r.config, seed: r.seed ?? 0, quantization: r.quantization ?? null };
}

/** The multi-node layout of node 0, checked; null on one host. */
function multiNode(opts: TpGroupOptions): MultiNode | null {
  const nodes = opts.nodes;
  if (!nodes || nodes.nnodes === 1) return null;
  checkMultiNode(nodes, opts.tp);
  if ((opts.device ?? 'cpu') !== 'cuda') throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `multi-node tensor parallelism (nnodes ${nodes.nnodes}) needs the CUDA backend (NCCL between nodes); the CPU backend's ranks share one process's memory`, { param: 'device' });
  if (nodes.nodeRank !== 0) throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `node ${nodes.nodeRank} hosts ranks (runNodeHost); only node 0 starts the group`, { param: 'node_rank' });
  return nodes;
}

/** Elements of one rank's slot in the CPU communicator: its largest collective part. */
function collectiveCapacity(spec: ModelSpec, tp: number, c: TpRunnerConfig): number {
  const T = c.maxNumBatchedTokens;
  const S = Math.min(c.maxNumSeqs, T);
  const R = Math.max(S, c.maxNumLogits ?? S + DEFAULT_PROMPT_LOGPROB_ROWS); // the runner's logits rows
  return Math.max(T * spec.hiddenSize, Math.ceil((T * spec.wordEmbedDim) / tp), Math.ceil((R * spec.vocabSize) / tp));
}
