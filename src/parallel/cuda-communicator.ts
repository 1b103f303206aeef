/**
 * The communicator of one GPU per process: NCCL for every collective, except all-reduces of at
 * most `maxBytes` (decode-sized), which take the one-shot custom kernel over CUDA IPC where every
 * pair of GPUs can map each other's memory (custom-allreduce.ts). PEREGRINE_CUSTOM_ALLREDUCE=0
 * keeps everything on NCCL. Every rank makes the same choice for the same call.
 */
import type { Tensor } from '../backends/backend.js';
import type { CudaBackend } from '../backends/cuda/cuda-backend.js';
import type { Communicator } from './communicator.js';
import { CustomAllReduce, type CustomAllReduceOptions } from './custom-allreduce.js';
import { NcclCommunicator } from './nccl.js';

export class CudaCommunicator implements Communicator {
  private constructor(
    private readonly nccl: NcclCommunicator,
    /** null where the group runs on NCCL alone */
    readonly custom: CustomAllReduce | null,
    /** why the custom all-reduce is off, or null */
    readonly customRefusal: string | null,
  ) {}

  /**
   * Joins the NCCL group named by `uniqueId`, then sets up the custom all-reduce (both collectives).
   * `giveUp` rejects to stop waiting for ranks that will not join (NcclCommunicator.create).
   */
  static async create(backend: CudaBackend, uniqueId: Uint8Array, rank: number, size: number, opts: CustomAllReduceOptions & { giveUp?: Promise<never> } = {}): Promise<CudaCommunicator> {
    const nccl = await NcclCommunicator.create(backend, uniqueId, rank, size, { giveUp: opts.giveUp });
    try {
      const { allReduce, refusal } = await CustomAllReduce.create(backend, nccl, opts);
      return new CudaCommunicator(nccl, allReduce, refusal);
    } catch (e) {
      nccl.abort(`custom all-reduce setup failed: ${(e as Error).message}`);
      throw e;
    }
  }

  get rank(): number { return this.nccl.rank; }
  get size(): number { return this.nccl.size; }

  allReduceSum(t: Tensor, numel: number): void {
    if (this.custom?.accepts(t, numel)) this.custom.allReduceSum(t, numel);
    else this.nccl.allReduceSum(t, numel);
  }

  allGather(out: Tensor, t: Tensor, numRows: number, width: number): void {
    this.nccl.allGather(out, t, numRows, width);
  }

  broadcast(t: Tensor, numel: number, root: number): void {
    this.nccl.broadcast(t, numel, root);
  }

  abort(reason: string): void {
    this.custom?.abort();
    this.nccl.abort(reason);
  }

  dispose(): void {
    this.custom?.dispose();
    this.nccl.dispose();
  }
}
