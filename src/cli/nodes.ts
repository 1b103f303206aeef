/**
 * The multi-node flags shared by `generate`, `serve` and `bench throughput|latency`:
 * --nnodes N --node-rank K --master-addr HOST --master-port PORT. Node 0 runs the command as
 * usual (rank 0 and its local ranks); on node K > 0 the same command only hosts ranks.
 */
import type { LLMOptions } from '../api/llm.js';
import { isPeregrineError } from '../errors.js';
import { DEFAULT_MASTER_ADDR, DEFAULT_MASTER_PORT } from '../parallel/node-protocol.js';
import { intArg, UsageError, type OptionSpec } from './args.js';
import { multiNodeOf } from '../api/llm-options.js';

export const NODE_OPTS: OptionSpec = {
  nnodes: { type: 'string' },
  'node-rank': { type: 'string' },
  'master-addr': { type: 'string' },
  'master-port': { type: 'string' },
};

export const NODE_HELP = `  --nnodes N           multi-node tensor parallelism (--device cuda): N nodes of --tp/N GPUs
                       each (0 .. tp/N-1); run the same command on every node (default 1)
  --node-rank K        this node (default 0): node 0 runs the scheduler; K > 0 only hosts ranks
  --master-addr HOST   node 0's address (default ${DEFAULT_MASTER_ADDR})
  --master-port PORT   node 0's rendezvous port (default ${DEFAULT_MASTER_PORT}); nodes wait for each
                       other up to env PEREGRINE_NODE_TIMEOUT_MS (default 5 min)
`;

type Args = Record<string, string | boolean | undefined>;
type NodeOptions = Pick<LLMOptions, 'nnodes' | 'nodeRank' | 'masterAddr' | 'masterPort' | 'nodeTimeoutMs'>;

/**
 * The LLMOptions of the multi-node flags, checked against `tp` and `device`; {} without them.
 * @throws UsageError naming the flag at fault
 */
export function nodeOptions(a: Args, tp: number | undefined, device: 'cpu' | 'cuda'): NodeOptions {
  const given = Object.keys(NODE_OPTS).filter((k) => a[k] !== undefined);
  if (given.length === 0) return {};
  const nnodes = intArg(a.nnodes, 'nnodes') ?? 1;
  const opts: NodeOptions = {
    nnodes,
    nodeRank: intArg(a['node-rank'], 'node-rank') ?? 0,
    masterAddr: typeof a['master-addr'] === 'string' ? a['master-addr'] : DEFAULT_MASTER_ADDR,
    masterPort: intArg(a['master-port'], 'master-port') ?? DEFAULT_MASTER_PORT,
    nodeTimeoutMs: Number(process.env.PEREGRINE_NODE_TIMEOUT_MS) || undefined,
  };
  if (nnodes === 1 && opts.nodeRank === 0) return {};
  try {
    multiNodeOf({ ...opts, tp: tp ?? 1, device });
  } catch (e) {
    if (!isPeregrineError(e, 'PGN_ERR_INVALID_ARGUMENT')) throw e;
    throw new UsageError(e.message.replace("device 'cuda'", '--device cuda'));
  }
  return opts;
}

/** Node K > 0: hosts this node's ranks until node 0 stops (progress on stderr); false on node 0. */
export async function hostRanksIfRemote(opts: LLMOptions, modelDir: string | null): Promise<boolean> {
  if ((opts.nodeRank ?? 0) === 0) return false;
  const { LLM } = await import('../api/llm.js');
  await LLM.hostRanks(modelDir, opts, (line) => process.stderr.write(`peregrine: ${line}\n`));
  return true;
}
