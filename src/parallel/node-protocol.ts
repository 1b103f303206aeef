/**
 * Multi-node tensor parallelism: which ranks each node hosts, and the messages between node 0
 * (the TpGroup, rank 0) and a rank host (node K > 0) over their TCP connection. Node 0 relays
 * every ToWorker message of a remote rank wrapped in 'to'; the host relays its workers'
 * FromWorker messages wrapped in 'from' and reports each worker's exit.
 */
import { PeregrineError } from '../errors.js';
import type { FromWorker, ToWorker } from './tp-protocol.js';

export const DEFAULT_MASTER_ADDR = '127.0.0.1';
export const DEFAULT_MASTER_PORT = 29500;

/** Where this process stands in a multi-node group (every node runs the same command but for nodeRank). */
export interface MultiNode {
  readonly nnodes: number;
  /** 0: rank 0 and its local ranks (the scheduler); K > 0: a rank host */
  readonly nodeRank: number;
  /** the address node 0 listens on and the others connect to */
  readonly masterAddr: string;
  readonly masterPort: number;
  /** how long node 0 waits for every node to join, and a node for node 0 (default 5 min) */
  readonly timeoutMs?: number;
}

/** node 0 -> node K */
export type ToNode =
  /** the same message for each of `ranks` (a step goes once per node, not once per rank) */
  | { readonly t: 'to'; readonly ranks: readonly number[]; readonly m: ToWorker }
  /** end rank `rank`'s worker abruptly (fault drills; workers still there after a stop's grace period) */
  | { readonly t: 'kill'; readonly rank: number }
  /** node 0 will not run with this node (it says why); the host exits with the reason */
  | { readonly t: 'refused'; readonly reason: string };

/** node K -> node 0 */
export type FromNode =
  /** the first message once the rendezvous is done: what this node was started with */
  | { readonly t: 'node'; readonly nodeRank: number; readonly tp: number; readonly hostname: string }
  | { readonly t: 'from'; readonly rank: number; readonly m: FromWorker }
  | { readonly t: 'exit'; readonly rank: number; readonly how: string };

/** GPUs (ranks) on every node: tp / nnodes */
export function ranksPerNode(tp: number, nnodes: number): number {
  return tp / nnodes;
}

/** The global ranks node `nodeRank` hosts: a contiguous block of tp / nnodes. */
export function ranksOfNode(tp: number, nnodes: number, nodeRank: number): number[] {
  const g = ranksPerNode(tp, nnodes);
  return Array.from({ length: g }, (_, i) => nodeRank * g + i);
}

/** The node that hosts `rank`. */
export function nodeOfRank(rank: number, tp: number, nnodes: number): number {
  return Math.floor(rank / ranksPerNode(tp, nnodes));
}

/**
 * Checks a multi-node layout: tp a multiple of nnodes, the node rank in range, a port.
 * @throws PeregrineError PGN_ERR_INVALID_ARGUMENT naming the flag at fault
 */
export function checkMultiNode(nodes: MultiNode, tp: number): void {
  const bad = (param: string, message: string) => new PeregrineError('PGN_ERR_INVALID_ARGUMENT', message, { param });
  const { nnodes, nodeRank, masterAddr, masterPort } = nodes;
  if (!Number.isInteger(nnodes) || nnodes < 1) throw bad('nnodes', `--nnodes must be a positive integer, got ${nnodes}`);
  if (!Number.isInteger(nodeRank) || nodeRank < 0 || nodeRank >= nnodes) throw bad('node_rank', `--node-rank must be in 0..${nnodes - 1} with --nnodes ${nnodes}, got ${nodeRank}`);
  if (!Number.isInteger(tp) || tp < nnodes || tp % nnodes !== 0) throw bad('tp', `--tp ${tp} must be a multiple of --nnodes ${nnodes} (every node runs tp / nnodes ranks, one GPU each)`);
  if (typeof masterAddr !== 'string' || masterAddr === '') throw bad('master_addr', '--master-addr must name node 0\'s address');
  if (!Number.isInteger(masterPort) || masterPort < 1 || masterPort > 65535) throw bad('master_port', `--master-port must be in [1, 65535], got ${masterPort}`);
}
