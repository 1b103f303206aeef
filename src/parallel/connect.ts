/** Joining a group's communicator from its init message, on rank 0 and in the workers alike. */
import type { Backend } from '../backends/backend.js';
import type { Communicator } from './communicator.js';
import { CpuCommunicator } from './cpu-communicator.js';
import type { TpCommInit } from './tp-protocol.js';

/** At once on the CPU; NCCL blocks until every rank has joined. */
export async function connect(comm: TpCommInit, rank: number, size: number, backend: Backend): Promise<Communicator> {
  if (comm.kind === 'cpu') return new CpuCommunicator(comm.shared, rank, comm.timeoutMs);
  const { NcclCommunicator } = await import('./nccl.js');
  return NcclCommunicator.create(backend, Uint8Array.from(comm.uniqueId), rank, size);
}
