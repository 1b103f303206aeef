/**
 * Host-side quantized weights and checkpoint quantization configs, shared by every format
 * file in this folder. The canonical layout (one per kind) is the one `QuantizedWeight` in
 * backends/backend.ts documents; format readers convert to it, writers convert from it.
 */
import { PeregrineError } from '../../errors.js';
import type { Checkpoint } from '../checkpoint.js';

export type QuantKind = 'fp8' | 'int8' | 'int4';

/** The `quant_method` values Peregrine reads (`fp8` is vLLM's / AutoFP8's own serialisation). */
export type QuantMethod = 'compressed-tensors' | 'modelopt' | 'fp8' | 'fbgemm_fp8' | 'awq' | 'gptq';

/** How activations are quantized for fp8 linears; weight-only kinds use 'none'. */
export type ActivationScheme = 'dynamic' | 'static' | 'none';

/** A checkpoint's quantization, normalised from `quantization_config` (or hf_quant_config.json). */
export interface QuantConfig {
  readonly method: QuantMethod;
  /** kind of the (first group of) quantized linears; a module's own tensors decide how it loads */
  readonly kind: QuantKind;
  /** weight group size along K; null = per channel (int) or per tensor / channel (fp8, see the tensors) */
  readonly groupSize: number | null;
  readonly symmetric: boolean;
  readonly activation: ActivationScheme;
  /** modules left unquantized, as the config spells them (names, `re:` regexes, or wildcards) */
  readonly ignore: readonly string[];
  /** GPTQ: stored zero points are the real ones minus this (1 for checkpoint_format "gptq", 0 for "gptq_v2") */
  readonly zeroOffset: number;
}

/** Values per i32 word of qweight. */
export const VALUES_PER_WORD: Readonly<Record<QuantKind, number>> = { fp8: 4, int8: 4, int4: 8 };
/** The implicit zero point of symmetric int4 (unsigned nibbles 0..15). */
export const INT4_SYM_ZERO = 8;
export const INT4_MAX = 15;
export const DEFAULT_GROUP_SIZE = 128;

/** A quantized linear weight in host memory, in the canonical layout of its kind. */
export interface HostQuantWeight {
  readonly kind: QuantKind;
  /** [N, K] of the dequantized weight */
  readonly shape: readonly [number, number];
  /** K for per-channel / per-tensor scales */
  readonly groupSize: number;
  /** packed codes, row-major [N, K / VALUES_PER_WORD[kind]] */
  readonly qweight: Int32Array;
  /** length 1 (per tensor, fp8 only) or N * numGroups, row-major [N, numGroups] */
  readonly scales: Float32Array;
  /** int4 asymmetric: [N, numGroups] integer zero points; null = symmetric */
  readonly zeros: Float32Array | null;
  /** fp8 static activation scale; null = dynamic per token (and for weight-only kinds) */
  readonly inputScale: number | null;
}

export function numGroups(K: number, groupSize: number): number {
  return Math.ceil(K / groupSize);
}

export function isPerTensor(h: Pick<HostQuantWeight, 'scales'>): boolean {
  return h.scales.length === 1;
}

/** The [N, K] of a tensor, checked to pack into whole i32 words for `kind`. */
export function checkPackable(kind: QuantKind, N: number, K: number, tensor: string): void {
  const per = VALUES_PER_WORD[kind];
  if (!Number.isInteger(N) || !Number.isInteger(K) || N <= 0 || K <= 0 || K % per !== 0) {
    throw new PeregrineError(
      'PGN_ERR_UNSUPPORTED_FEATURE',
      `tensor '${tensor}' [${N}, ${K}]: ${kind} weights need an input size K divisible by ${per}`,
      { tensor, shape: [N, K], kind },
    );
  }
}

export function checkGroupSize(groupSize: number, K: number, what: string): number {
  const g = groupSize === -1 ? K : groupSize;
  if (!Number.isInteger(g) || g <= 0) {
    throw new PeregrineError('PGN_ERR_UNSUPPORTED_FEATURE', `${what}: group size ${groupSize} is not a positive integer (or -1 for per channel)`, { groupSize });
  }
  return g;
}

/** PGN_ERR_UNSUPPORTED_FEATURE for a quantization the loader does not handle. */
export function unsupportedQuant(message: string, details: Record<string, unknown> = {}): PeregrineError {
  return new PeregrineError('PGN_ERR_UNSUPPORTED_FEATURE', message, details);
}

/** PGN_ERR_CONFIG_INVALID for a malformed quantization_config. */
export function invalidQuantConfig(message: string, details: Record<string, unknown> = {}): PeregrineError {
  return new PeregrineError('PGN_ERR_CONFIG_INVALID', `quantization_config: ${message}`, details);
}

/** 1.5 * 2^52: adding and subtracting it rounds an f64 of magnitude < 2^51 to an integer, half to even */
const RNE_MAGIC = 6755399441055744;

/** Round half to even, as torch.round does (Math.round rounds halves up). |x| < 2^51. */
export function roundHalfEven(x: number): number {
  return x + RNE_MAGIC - RNE_MAGIC;
}

const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** The bytes of packed words, little-endian (the byte order every format stores). */
export function wordBytes(words: Int32Array): Uint8Array {
  requireLittleEndian();
  return new Uint8Array(words.buffer, words.byteOffset, words.byteLength);
}

/** Little-endian bytes (a multiple of 4 long) as i32 words; copies only when unaligned. */
export function bytesToWords(bytes: Uint8Array): Int32Array {
  requireLittleEndian();
  if (bytes.byteOffset % 4 === 0) return new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  return new Int32Array(bytes.slice().buffer);
}

export function requireLittleEndian(): void {
  if (!HOST_IS_LITTLE_ENDIAN) throw unsupportedQuant('quantized weights need a little-endian host');
}

/** One checkpoint format: its config parser and its per-module reader (the rename table lives beside them). */
export interface QuantFormat {
  readonly methods: readonly QuantMethod[];
  /** `qc` is the quantization_config object; throws PGN_ERR_UNSUPPORTED_FEATURE for variants Peregrine cannot run */
  parseConfig(qc: Record<string, unknown>): QuantConfig;
  /** whether the checkpoint holds `module` in this format's quantized form */
  hasModule(ckpt: Checkpoint, module: string): boolean;
  /** the module in the canonical layout; null when the checkpoint stores it unquantized */
  readModule(ckpt: Checkpoint, module: string, cfg: QuantConfig): HostQuantWeight | null;
}

/** The smallest f32 >= x (x finite and >= 0): a scale that never pushes amax past the code range. */
export function f32Up(x: number): number {
  const f = Math.fround(x);
  if (f >= x) return f;
  const bits = new Uint32Array(Float32Array.of(f).buffer);
  bits[0]! += 1;
  return new Float32Array(bits.buffer)[0]!;
}
