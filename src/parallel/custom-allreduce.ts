/**
 * A one-shot all-reduce for small messages between the GPUs of one host (kernels/custom_allreduce.cu):
 * each rank owns a receive buffer and a signal block made with cuMemAlloc, exports them with
 * cuIpcGetMemHandle, and maps every peer's with cuIpcOpenMemHandle; one kernel stores the input
 * into every rank's receive buffer, meets the peers at a flag barrier and sums its own buffer's
 * slots in rank order. Decode-sized messages are what this is for; larger ones stay on NCCL
 * (cuda-communicator.ts).
 *
 * Setting up is a collective over the group's NCCL communicator (every rank calls `create`):
 * the ranks all-gather where they run, and all go without it (null) when any pair cannot map
 * each other's memory (another host, no peer access, more than 8 ranks, PEREGRINE_CUSTOM_ALLREDUCE=0).
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { bytesPerElement, type DType, type Tensor } from '../backends/backend.js';
import type { CudaBackend } from '../backends/cuda/cuda-backend.js';
import { asCuda } from '../backends/cuda/cuda-tensor.js';
import { check, CU_IPC_HANDLE_BYTES, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS, out, type DevicePtr, type Driver } from '../backends/cuda/driver.js';
import type { Kernel } from '../backends/cuda/module.js';
import { CudaStream } from '../backends/cuda/stream.js';
import { PeregrineError } from '../errors.js';
import type { Communicator } from './communicator.js';

/**
 * The largest all-reduce the kernel takes by default (bytes of one slot of the receive buffers), by
 * group size. Measured inside CUDA graphs on H100s (NVLink), bf16, 2026-11-28: 2 ranks: the kernel beat
 * NCCL at every size up to 2 MiB (5.1 against 6.7 us at 8 KiB, 13.4 against 28.0 at 2 MiB); 4 ranks:
 * up to 1 MiB (5.2 against 9.6 us at 8 KiB, 16.1 against 17.9 at 1 MiB), not at 2 MiB (27.4 against 26.6).
 * More ranks read more per byte: 512 KiB there, unmeasured.
 */
export function defaultCustomAllReduceMaxBytes(numRanks: number): number {
  return numRanks <= 2 ? 2 << 20 : numRanks <= 4 ? 1 << 20 : 512 << 10;
}
// keep in step with kernels/custom_allreduce.cu
const MAX_RANKS = 8;
const MAX_BLOCKS = 64;
const THREADS = 512;
const PACK_BYTES = 16;
/** PgnArSignal: start [MAX_BLOCKS][MAX_RANKS] u32, counter [MAX_BLOCKS] u32, abort u32 */
const SIGNAL_ABORT_OFFSET = (MAX_BLOCKS * MAX_RANKS + MAX_BLOCKS) * 4;
const SIGNAL_BYTES = SIGNAL_ABORT_OFFSET + 4;
/** blocks of every all-reduce (each takes an SM while it runs): on 2 H100s 36 matched 16 up to 128 KiB and beat it above */
const DEFAULT_BLOCKS = 36;
const FLOAT_DTYPES: readonly DType[] = ['f32', 'bf16', 'f16'];

export interface CustomAllReduceOptions {
  /**
   * messages up to this many bytes take the kernel (default PEREGRINE_CUSTOM_ALLREDUCE_MAX_BYTES, else
   * defaultCustomAllReduceMaxBytes: 2 MiB for 2 ranks, 1 MiB for 3-4, 512 KiB above)
   */
  readonly maxBytes?: number;
  /** blocks of every all-reduce of the group (default PEREGRINE_CUSTOM_ALLREDUCE_BLOCKS or 36, at most 64) */
  readonly blocks?: number;
}

/** Why this process cannot join (null: it can, as far as it alone can tell). */
function localRefusal(size: number): string | null {
  if (process.env.PEREGRINE_CUSTOM_ALLREDUCE === '0') return 'PEREGRINE_CUSTOM_ALLREDUCE=0';
  if (size > MAX_RANKS) return `${size} ranks (at most ${MAX_RANKS})`;
  if (size < 2) return 'one rank';
  return null;
}

/**
 * 31 bits naming this host (and boot) and the GPUs this process sees: ranks elsewhere cannot map
 * our memory, and ranks that see other GPUs (e.g. two "nodes" of one host with CUDA_VISIBLE_DEVICES
 * 0 and 1) do not number them as we do, so they count as another host (NCCL then).
 */
function hostId(): number {
  const boot = existsSync('/proc/sys/kernel/random/boot_id') ? readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() : '';
  return createHash('sha256').update(`${hostname()}\n${boot}\n${process.env.CUDA_VISIBLE_DEVICES ?? '*'}`).digest().readUInt32LE(0) & 0x7fffffff;
}

/** Every rank's `words` (the same count on each), rank after rank; a collective. */
async function allGatherWords(backend: CudaBackend, comm: Communicator, words: Int32Array): Promise<Int32Array[]> {
  const n = words.length;
  const mine = backend.fromI32([1, n], words);
  const all = backend.empty([1, n * comm.size], 'i32');
  try {
    comm.allGather(all, mine, 1, n);
    const got = await backend.downloadI32(all);
    return Array.from({ length: comm.size }, (_, r) => got.slice(r * n, (r + 1) * n));
  } finally {
    backend.free(mine);
    backend.free(all);
  }
}

export class CustomAllReduce {
  private readonly kernels = new Map<DType, Kernel>();
  private aborted = false;
  private disposed = false;

  private constructor(
    private readonly backend: CudaBackend,
    readonly rank: number,
    readonly size: number,
    /** the largest message in bytes this all-reduce takes */
    readonly maxBytes: number,
    /** the grid of every call: block b's barrier flag counts calls, the same on every rank */
    readonly blocks: number,
    private readonly own: { readonly recv: DevicePtr; readonly signal: DevicePtr },
    /** peers' buffers as mapped here (null at this rank's own index) */
    private readonly peers: readonly (DevicePtr | null)[],
    private readonly table: Tensor,
    private readonly abortStream: CudaStream,
  ) {}

  /**
   * Joins the group of `comm` (every rank calls this, in the same order as its other collectives).
   * @returns `allReduce` null on every rank when any rank cannot take part, with the reason in `refusal`
   */
  static async create(backend: CudaBackend, comm: Communicator, opts: CustomAllReduceOptions = {}): Promise<{ allReduce: CustomAllReduce | null; refusal: string | null }> {
    const drv = backend.dev.drv;
    const { rank, size } = comm;
    const maxBytes = Math.ceil((opts.maxBytes ?? (Number(process.env.PEREGRINE_CUSTOM_ALLREDUCE_MAX_BYTES) || defaultCustomAllReduceMaxBytes(size))) / PACK_BYTES) * PACK_BYTES;
    const blocks = Math.max(1, Math.min(MAX_BLOCKS, opts.blocks ?? (Number(process.env.PEREGRINE_CUSTOM_ALLREDUCE_BLOCKS) || DEFAULT_BLOCKS)));
    const ordinal = backend.dev.props.ordinal;
    // round 1: where every rank runs, whether it wants to join, and with which sizes (every rank must use the same)
    const refused = localRefusal(size);
    const where = await allGatherWords(backend, comm, Int32Array.of(hostId(), ordinal, refused === null ? 1 : 0, maxBytes, blocks));
    const whyNot = (): string | null => {
      if (refused) return refused;
      const other = where.findIndex((w) => w[2] === 0);
      if (other >= 0) return `rank ${other} does not take part`;
      const differs = where.findIndex((w) => w[3] !== maxBytes || w[4] !== blocks);
      if (differs >= 0) return `rank ${differs} asks for ${where[differs]![3]} bytes and ${where[differs]![4]} blocks, rank ${rank} for ${maxBytes} and ${blocks}`;
      for (const [p, w] of where.entries()) {
        if (p === rank) continue;
        if (w[0] !== where[rank]![0]) return `rank ${p} runs on another host`;
        if (w[1] === ordinal) return `rank ${p} runs on GPU ${ordinal} too`;
        const can = out<number>((b) => drv.cuDeviceCanAccessPeer(b, ordinal, w[1]!), drv, 'cuDeviceCanAccessPeer', 0);
        if (!can) return `GPU ${ordinal} cannot access GPU ${w[1]} (rank ${p}) as a peer`;
      }
      return null;
    };
    // round 2: every rank's verdict, with the handles of its buffers when it can join
    const mineWhy = whyNot();
    let own: { recv: DevicePtr; signal: DevicePtr } | null = null;
    const record = new Int32Array(1 + (2 * CU_IPC_HANDLE_BYTES) / 4);
    if (mineWhy === null) {
      own = allocBuffers(backend, 2 * size * maxBytes);
      record[0] = 1;
      new Uint8Array(record.buffer).set(ipcHandle(drv, own.recv), 4);
      new Uint8Array(record.buffer).set(ipcHandle(drv, own.signal), 4 + CU_IPC_HANDLE_BYTES);
    }
    const records = await allGatherWords(backend, comm, record);
    const refusing = records.findIndex((r) => r[0] !== 1);
    // round 3: whether every rank could map every peer
    const peers: (DevicePtr | null)[] = []; // receive buffers of ranks 0..size-1, then their signals
    let opened = refusing < 0;
    for (let k = 0; opened && k < 2 * size; k++) {
      const p = k % size;
      try {
        peers.push(p === rank ? null : openHandle(drv, new Uint8Array(records[p]!.buffer, 4 + (k < size ? 0 : CU_IPC_HANDLE_BYTES), CU_IPC_HANDLE_BYTES)));
      } catch {
        opened = false;
      }
    }
    const verdicts = await allGatherWords(backend, comm, Int32Array.of(opened ? 1 : 0));
    const failed = verdicts.findIndex((v) => v[0] !== 1);
    if (failed >= 0) {
      for (const p of peers) if (p !== null) drv.cuIpcCloseMemHandle(p);
      if (own) freeBuffers(drv, own);
      const refusal = mineWhy ?? (refusing >= 0 ? `rank ${refusing}: it cannot take part` : `rank ${failed} could not map its peers' memory (cuIpcOpenMemHandle)`);
      return { allReduce: null, refusal };
    }
    const table = backend.fromBytes([4 * MAX_RANKS], 'I32', pointerTable(rank, size, own!, peers), 'i32');
    const allReduce = new CustomAllReduce(backend, rank, size, maxBytes, blocks, own!, peers, table, new CudaStream(drv));
    return { allReduce, refusal: null };
  }

  /** Whether the kernel takes this all-reduce: a float dtype, whole 16-byte packs, at most maxBytes. */
  accepts(t: Tensor, numel: number): boolean {
    const bytes = numel * bytesPerElement(t.dtype);
    return !this.aborted && FLOAT_DTYPES.includes(t.dtype) && bytes <= this.maxBytes && bytes % PACK_BYTES === 0 && numel > 0;
  }

  /** t[0 .. numel) = the sum over the ranks, in place, queued on the backend's stream (capturable). */
  allReduceSum(t: Tensor, numel: number): void {
    if (this.aborted || this.disposed) throw new PeregrineError('PGN_ERR_ENGINE_DEAD', `custom all-reduce on a closed group (rank ${this.rank})`, { rank: this.rank });
    if (!this.accepts(t, numel)) throw new PeregrineError('PGN_ERR_INTERNAL', `custom all-reduce of ${numel} ${t.dtype} elements: not a float message of whole 16-byte packs within ${this.maxBytes} bytes`, { numel, dtype: t.dtype });
    const c = asCuda(t, 'allReduceSum', 'tensor');
    const numPacks = (numel * bytesPerElement(t.dtype)) / PACK_BYTES;
    const table = asCuda(this.table, 'allReduceSum', 'table').ptr;
    this.kernel(t.dtype).launch(this.blocks, THREADS, 0, this.backend.stream, [c.ptr, c.ptr, table, numPacks, this.maxBytes / PACK_BYTES, this.rank]);
  }

  /** Releases kernels waiting for a peer that is gone (their output is undefined); later calls throw. */
  abort(): void {
    if (this.aborted || this.disposed) return;
    this.aborted = true;
    const drv = this.backend.dev.drv;
    // on a stream of its own: the backend's stream may be busy with a kernel waiting for a dead peer
    check(drv, drv.cuMemsetD32Async(this.own.signal + SIGNAL_ABORT_OFFSET, 1, 1, this.abortStream.handle) as number, 'cuMemsetD32Async(custom all-reduce abort)');
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    const drv = this.backend.dev.drv;
    this.backend.stream.synchronize(); // our last call has passed its barrier: every peer's stores into our buffer are done
    this.abortStream.synchronize();
    for (const p of this.peers) if (p !== null) check(drv, drv.cuIpcCloseMemHandle(p) as number, 'cuIpcCloseMemHandle');
    freeBuffers(drv, this.own);
    this.backend.free(this.table);
    this.abortStream.destroy();
  }

  private kernel(dtype: DType): Kernel {
    let k = this.kernels.get(dtype);
    if (!k) {
      k = this.backend.kernels.module.kernel(`custom_allreduce_${dtype}_n${this.size}`, ['ptr', 'ptr', 'ptr', 'i64', 'i64', 'i32']);
      this.kernels.set(dtype, k);
    }
    return k;
  }
}

/** A receive buffer and a zeroed signal block, each its own cuMemAlloc allocation (IPC exports whole allocations). */
function allocBuffers(backend: CudaBackend, recvBytes: number): { recv: DevicePtr; signal: DevicePtr } {
  const drv = backend.dev.drv;
  const recv = Number(out<number | bigint>((b) => drv.cuMemAlloc(b, recvBytes), drv, `cuMemAlloc(${recvBytes} B custom all-reduce receive buffer)`, 0));
  const signal = Number(out<number | bigint>((b) => drv.cuMemAlloc(b, SIGNAL_BYTES), drv, 'cuMemAlloc(custom all-reduce signals)', 0));
  check(drv, drv.cuMemsetD8Async(signal, 0, SIGNAL_BYTES, backend.stream.handle) as number, 'cuMemsetD8Async(custom all-reduce signals)');
  backend.stream.synchronize();
  return { recv, signal };
}

function freeBuffers(drv: Driver, b: { recv: DevicePtr; signal: DevicePtr }): void {
  check(drv, drv.cuMemFree(b.recv) as number, 'cuMemFree');
  check(drv, drv.cuMemFree(b.signal) as number, 'cuMemFree');
}

function ipcHandle(drv: Driver, ptr: DevicePtr): Uint8Array {
  const h: { reserved?: ArrayLike<number> } = {};
  check(drv, drv.cuIpcGetMemHandle(h, ptr) as number, 'cuIpcGetMemHandle');
  return Uint8Array.from(h.reserved!);
}

function openHandle(drv: Driver, handle: Uint8Array): DevicePtr {
  const ptr = out<number | bigint>((b) => drv.cuIpcOpenMemHandle(b, { reserved: Array.from(handle) }, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS), drv, 'cuIpcOpenMemHandle', 0);
  return Number(ptr);
}

/** PgnArTable: recv[MAX_RANKS] then signal[MAX_RANKS], each rank's as this process maps it. */
function pointerTable(rank: number, size: number, own: { recv: DevicePtr; signal: DevicePtr }, peers: readonly (DevicePtr | null)[]): Uint8Array {
  const bytes = new Uint8Array(2 * MAX_RANKS * 8);
  const dv = new DataView(bytes.buffer);
  for (let r = 0; r < size; r++) {
    dv.setBigUint64(8 * r, BigInt(r === rank ? own.recv : peers[r]!), true);
    dv.setBigUint64(8 * (MAX_RANKS + r), BigInt(r === rank ? own.signal : peers[size + r]!), true);
  }
  return bytes;
}
