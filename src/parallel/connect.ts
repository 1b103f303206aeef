/** Joining a group's communicator from its init message, on rank 0 and in the workers alike. */
import type { Backend } from '../backends/backend.js';
import { PeregrineError } from '../errors.js';
import type { Communicator } from './communicator.js';
import { CpuCommunicator } from './cpu-communicator.js';
import type { TpCommInit } from './tp-protocol.js';

/**
 * At once on the CPU; NCCL (and the custom all-reduce over it) resolves once every rank has joined, or
 * rejects when `giveUp` does (a rank died first) or the wait runs past PEREGRINE_STEP_TIMEOUT_S.
 */
export async function connect(comm: TpCommInit, rank: number, size: number, backend: Backend, giveUp?: Promise<never>): Promise<Communicator> {
  if (comm.kind === 'cpu') return new CpuCommunicator(comm.shared, rank, comm.timeoutMs);
  const [{ CudaBackend }, { CudaCommunicator }] = await Promise.all([import('../backends/cuda/cuda-backend.js'), import('./cuda-communicator.js')]);
  if (!(backend instanceof CudaBackend)) throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `NCCL needs the CUDA backend, got ${backend.device}`, { device: backend.device });
  return CudaCommunicator.create(backend, Uint8Array.from(comm.uniqueId), rank, size, { giveUp });
}
