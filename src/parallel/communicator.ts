/**
 * The collectives tensor parallelism needs, over the ranks of one group. Every rank calls
 * the same collectives in the same order with the same sizes; a call is queued like any
 * backend op (NCCL: on the backend's stream) and never allocates per step.
 *
 * Implementations: CpuCommunicator (worker threads over shared memory, the CI reference) and
 * NcclCommunicator (one GPU per process).
 */
import type { Tensor } from '../backends/backend.js';

export interface Communicator {
  readonly rank: number;
  readonly size: number;
  /** t[0 .. numel) = the sum of every rank's t[0 .. numel), in place. */
  allReduceSum(t: Tensor, numel: number): void;
  /**
   * Concatenates along the last dim: out [numRows, size * width] holds rank r's t [numRows, width]
   * in columns r * width .. (r + 1) * width (a column-parallel output made whole).
   */
  allGather(out: Tensor, t: Tensor, numRows: number, width: number): void;
  /** t[0 .. numel) = rank `root`'s t[0 .. numel). */
  broadcast(t: Tensor, numel: number, root: number): void;
  /**
   * Stops the group: collectives in flight or later on any rank fail with PGN_ERR_ENGINE_DEAD
   * (CPU) or return early (NCCL) instead of waiting for a rank that is gone. Safe to call twice.
   */
  abort(reason: string): void;
  dispose(): void;
}
