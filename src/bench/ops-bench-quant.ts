/**
 * ops-bench rows for quantized linears (issue 6) on Llama-3.1-8B shapes, random codes: FP8 with a per-tensor
 * weight scale and dynamic per-token activations (what `peregrine build --quantization fp8` writes), INT8 per
 * channel and INT4 group 128 (symmetric), beside BF16 on the same shapes, at M = 1, 16 and 128 tokens; plus
 * the paths the dispatch did not pick (`kind/path`) where they decide its thresholds. Rows are named
 * `qgemm <kind>[/<path>] <linear>`: `node dist/src/bench/ops-bench.js --only qgemm` runs just these.
 * Bytes are the least each op must move: codes, scales, x and out (not the quantized-activation scratch).
 */
import type { Tensor } from '../backends/backend.js';
import type { CudaBackend } from '../backends/cuda/cuda-backend.js';
import { fillCodes, forceFp8Scaling, forceQuantPath, type QuantPath } from '../backends/cuda/cuda-quant.js';
import type { Fp8Scaling } from '../backends/cuda/cuda-quant-gemm.js';
import type { QuantizedWeight } from '../backends/backend.js';

const HIDDEN = 4096, QKV = 6144, FFN = 14336;
const LINEARS = [['qkv_proj', QKV, HIDDEN], ['o_proj', HIDDEN, HIDDEN], ['gate_up_proj', 2 * FFN, HIDDEN], ['down_proj', HIDDEN, FFN]] as const;
const GROUP = 128;
/** E4M3 codes with exponents <= 6 and any sign and mantissa: finite, |w| < 1 */
const FP8_CODE_MASK = 0xb7b7b7b7;
const ALL_BITS = 0xffffffff;

type Kind = 'bf16' | 'fp8' | 'int8' | 'int4';

export interface QuantBenchCase {
  readonly op: string;
  readonly shape: string;
  readonly bytes: number;
  readonly flops: number;
  readonly setBytes: number;
  make(): () => void;
}

interface Variant {
  readonly kind: Kind;
  readonly path?: QuantPath;
  readonly scaling?: Fp8Scaling;
  readonly tokens: readonly number[];
  /** only these linears (default all) */
  readonly linears?: readonly string[];
}

const VARIANTS: readonly Variant[] = [
  { kind: 'bf16', tokens: [1, 16, 128] },
  { kind: 'fp8', tokens: [1, 16, 128] },
  { kind: 'int8', tokens: [1, 16, 128] },
  { kind: 'int4', tokens: [1, 16, 128] },
  { kind: 'fp8', path: 'cublas', tokens: [1, 16], linears: ['o_proj', 'gate_up_proj'] },
  { kind: 'fp8', path: 'cublas', scaling: 'none', tokens: [128], linears: ['o_proj', 'gate_up_proj'] },
  { kind: 'int4', path: 'gemv', tokens: [4, 8], linears: ['o_proj', 'gate_up_proj', 'down_proj'] },
  { kind: 'int4', path: 'dequant', tokens: [4, 8], linears: ['o_proj', 'gate_up_proj', 'down_proj'] },
];

function weightBytes(kind: Kind, N: number, K: number): number {
  switch (kind) {
    case 'bf16': return N * K * 2;
    case 'fp8': return N * K + 4;
    case 'int8': return N * K + N * 4;
    case 'int4': return (N * K) / 2 + N * (K / GROUP) * 4;
  }
}

/** A random quantized weight made on the device (codes by kernel, scales uniform). */
function randomWeight(be: CudaBackend, kind: 'fp8' | 'int8' | 'int4', N: number, K: number, seed: number, own: <T extends Tensor>(t: T) => T): QuantizedWeight {
  const perWord = kind === 'int4' ? 8 : 4;
  const qweight = own(be.empty([N, K / perWord], 'i32'));
  fillCodes(be, qweight, seed, kind === 'fp8' ? FP8_CODE_MASK : ALL_BITS);
  const groupSize = kind === 'int4' ? GROUP : K;
  const scales = own(be.empty(kind === 'fp8' ? [1] : [N, K / groupSize], 'f32'));
  be.fillUniform(scales, seed + 1, 0.01);
  return { kind, shape: [N, K], groupSize, qweight, scales, zeros: null, inputScale: null };
}

/** The quantized-linear cases; `rand` and `own` are ops-bench's (random bf16 tensors, freed after each case). */
export function quantCases(be: CudaBackend, rand: (shape: number[]) => Tensor, own: <T extends Tensor>(t: T) => T): QuantBenchCase[] {
  const out: QuantBenchCase[] = [];
  let seed = 1000;
  for (const v of VARIANTS) {
    const name = v.path ? `${v.kind}/${v.path}${v.scaling ? `-${v.scaling}` : ''}` : v.kind;
    for (const T of v.tokens) {
      for (const [linear, N, K] of LINEARS) {
        if (v.linears && !v.linears.includes(linear)) continue;
        const wBytes = weightBytes(v.kind, N, K);
        out.push({
          op: `qgemm ${name} ${linear}`, shape: `${T}x${N}x${K}`, bytes: wBytes + T * K * 2 + T * N * 2, flops: 2 * T * N * K, setBytes: wBytes,
          make: () => {
            const x = rand([T, K]);
            const o = own(be.empty([T, N], 'bf16'));
            if (v.kind === 'bf16') {
              const w = own(be.empty([N, K], 'bf16'));
              be.fillUniform(w, seed++, 0.02);
              return () => be.linear(o, x, w, null, T);
            }
            const w = randomWeight(be, v.kind, N, K, seed++, own);
            return () => {
              forceQuantPath(v.path ?? null);
              forceFp8Scaling(v.scaling ?? null);
              try {
                be.linear(o, x, w, null, T);
              } finally {
                forceQuantPath(null);
                forceFp8Scaling(null);
              }
            };
          },
        });
      }
    }
  }
  return out;
}
