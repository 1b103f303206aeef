/**
 * ops-bench rows for quantized linears (issue 6) on Llama-3.1-8B shapes, random codes: FP8 with a per-tensor
 * weight scale and dynamic per-token activations (what `peregrine build --quantization fp8` writes), INT8 per
 * channel and INT4 group 128 (symmetric), beside BF16 on the same shapes, at 1 .. 128 tokens; plus the paths
 * the dispatch did not pick (`kind/path`): the older decode kernels (fp8/mma, int/gemv) as the "before" of the
 * decode GEMV (path qgemv), cuBLASLt, dequantize. `fp8+xq` rows get x already in E4M3 (what the fused RMSNorm
 * hands qkv_proj and gate_up_proj in the decoder); `fp8-actq` rows quantize x with the older one-block kernel.
 * `qnorm` rows time RMSNorm + residual alone and fused with FP8 quantization. Rows are named
 * `qgemm <kind>[/<path>] <linear>` and `qnorm ...`: `node dist/src/bench/ops-bench.js --only qgemm` (or `--only qnorm`)
 * runs just those.
 * Bytes are the least each op must move: codes, scales, x and out (not the quantized-activation scratch).
 */
import type { Fp8Activations, Tensor } from '../backends/backend.js';
import type { CudaBackend } from '../backends/cuda/cuda-backend.js';
import { fillCodes, forceFp8Scaling, forceQuantPath, quantizeFp8Activations, type QuantPath } from '../backends/cuda/cuda-quant.js';
import { quantFastPolicy } from '../backends/cuda/cuda-quant-gemv.js';
import type { Fp8Scaling } from '../backends/cuda/cuda-quant-gemm.js';
import type { QuantizedWeight } from '../backends/backend.js';
import type { BenchCase } from './ops-bench.js';

const HIDDEN = 4096, QKV = 6144, FFN = 14336;
const LINEARS = [['qkv_proj', QKV, HIDDEN], ['o_proj', HIDDEN, HIDDEN], ['gate_up_proj', 2 * FFN, HIDDEN], ['down_proj', HIDDEN, FFN]] as const;
const GROUP = 128;
/** E4M3 codes with exponents <= 6 and any sign and mantissa: finite, |w| < 1 */
const FP8_CODE_MASK = 0xb7b7b7b7;
const ALL_BITS = 0xffffffff;

type Kind = 'bf16' | 'fp8' | 'int8' | 'int4';

interface Variant {
  readonly kind: Kind;
  readonly path?: QuantPath;
  readonly scaling?: Fp8Scaling;
  /** fp8: x handed over already quantized (Backend.linear's xq) */
  readonly xq?: boolean;
  /** fp8: activations quantized by quant_fp8_act (PEREGRINE_QUANT_FAST=0's kernel) */
  readonly oldQuant?: boolean;
  readonly tokens: readonly number[];
  /** only these linears (default all) */
  readonly linears?: readonly string[];
}

const VARIANTS: readonly Variant[] = [
  { kind: 'bf16', tokens: [1, 8, 128] },
  { kind: 'fp8', tokens: [1, 2, 4, 8, 16, 128] },
  { kind: 'fp8', xq: true, tokens: [1, 8, 128] },
  { kind: 'int8', tokens: [1, 8, 128] },
  { kind: 'int4', tokens: [1, 2, 4, 8, 16, 128] },
  { kind: 'fp8', path: 'mma', tokens: [1, 8] },
  { kind: 'fp8', path: 'mma', xq: true, tokens: [1, 8] },
  { kind: 'int8', path: 'gemv', tokens: [1, 8] },
  { kind: 'int4', path: 'gemv', tokens: [1, 8] },
  { kind: 'fp8', oldQuant: true, tokens: [16, 128], linears: ['o_proj', 'down_proj'] },
  { kind: 'fp8', path: 'cublas', tokens: [8], linears: ['o_proj', 'gate_up_proj'] },
  { kind: 'int4', path: 'dequant', tokens: [8], linears: ['o_proj', 'gate_up_proj', 'down_proj'] },
  // the tiled int GEMM (PEREGRINE_INT_GEMM=1's path) beside the default dequantized tiles at 128 tokens
  { kind: 'int8', path: 'igemm', tokens: [16, 128, 512] },
  { kind: 'int4', path: 'igemm', tokens: [16, 128, 512] },
];
const NORM_TOKENS = [1, 64, 256];

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
export function quantCases(be: CudaBackend, rand: (shape: number[]) => Tensor, own: <T extends Tensor>(t: T) => T): BenchCase[] {
  const out: BenchCase[] = [];
  let seed = 1000;
  for (const v of VARIANTS) {
    const name = `${v.kind}${v.path ? `/${v.path}` : ''}${v.scaling ? `-${v.scaling}` : ''}${v.xq ? '+xq' : ''}${v.oldQuant ? '-actq' : ''}`;
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
            const xq: Fp8Activations | null = v.xq ? { codes: own(be.empty([T, K / 4], 'i32')), scales: own(be.empty([T], 'f32')) } : null;
            if (xq) quantizeFp8Activations(be, xq, x, T, null);
            const fused = quantFastPolicy.fused;
            return () => {
              forceQuantPath(v.path ?? null);
              forceFp8Scaling(v.scaling ?? null);
              quantFastPolicy.fused = fused && !v.oldQuant;
              try {
                be.linear(o, x, w, null, T, xq);
              } finally {
                forceQuantPath(null);
                forceFp8Scaling(null);
                quantFastPolicy.fused = fused;
              }
            };
          },
        });
      }
    }
  }
  for (const T of NORM_TOKENS) {
    const act = T * HIDDEN * 2;
    for (const fp8 of [false, true]) {
      out.push({
        op: `qnorm rmsNorm+residual${fp8 ? '+fp8' : ''}`, shape: `${T}x${HIDDEN}`, bytes: 4 * act + HIDDEN * 2 + (fp8 ? act / 2 + T * 4 : 0), flops: 0, setBytes: 4 * act,
        make: () => {
          const x = rand([T, HIDDEN]), r = rand([T, HIDDEN]), w = rand([HIDDEN]), o = own(be.empty([T, HIDDEN], 'bf16'));
          const xq: Fp8Activations = { codes: own(be.empty([T, HIDDEN / 4], 'i32')), scales: own(be.empty([T], 'f32')) };
          return fp8 ? () => void be.rmsNormFp8(o, x, w, 1e-5, T, r, 0, xq, null) : () => be.rmsNorm(o, x, w, 1e-5, T, r);
        },
      });
    }
  }
  return out;
}
