/**
 * Loading one linear weight of a (possibly) quantized checkpoint onto a backend: the hook the
 * model loader calls for its linear entries. A module stored quantized (its format's tensors are
 * present) becomes a QuantizedWeight; one stored in high precision (lm_head, ignored modules)
 * loads as a plain Tensor, exactly as without quantization.
 *
 * Packed q|k|v and gate|up concatenate along N: codes and per-row scales / zeros append.
 * Per-tensor FP8 scales that differ between the parts become a per-channel scale vector ([N, 1],
 * each part's scale repeated over its rows): exact, no second rounding of the codes (vLLM
 * requantizes to the largest scale instead). The FP8 GEMM already scales its output per token
 * for dynamic activations, so a per-column weight scale rides in the same epilogue. Static
 * input scales of the parts (the same input x) combine as their maximum, which never clips.
 */
import type { Backend, QuantizedWeight, Tensor } from '../../backends/backend.js';
import type { WeightTransform } from '../../models/spec.js';
import { applyWeightTransforms } from '../../models/weight-transform.js';
import type { Checkpoint } from '../checkpoint.js';
import type { HostQuantWeight, QuantConfig } from './types.js';
import { INT4_SYM_ZERO, isPerTensor, numGroups, unsupportedQuant, VALUES_PER_WORD, wordBytes } from './types.js';
import { quantFormatOf } from './index.js';
import { moduleOf } from './tensors.js';

export { detectQuantization, detectQuantizationInDir } from './index.js';

/**
 * Load the linear weight `hfNames` (one name, or names concatenated along dim 0) on `backend`.
 * @param format the checkpoint's quantization (detectQuantization), or null for a plain checkpoint
 * @param transforms the weight map's load-time transforms; quantized weights take the row-only
 *   ones (permuteBlocks, sliceRows) and refuse transpose / reshape with PGN_ERR_UNSUPPORTED_FEATURE
 * @returns a QuantizedWeight when the checkpoint stores the module quantized, else a Tensor in
 *   backend.activationDtype
 * @throws PeregrineError PGN_ERR_WEIGHTS_MISSING_TENSOR, PGN_ERR_WEIGHTS_SHAPE / _DTYPE for malformed
 *   quantized tensors (naming tensor and file), PGN_ERR_UNSUPPORTED_FEATURE for a layout Peregrine cannot run
 * @example loadLinearWeight(ckpt, ['m.layers.0.self_attn.q_proj.weight', ...k, ...v], backend, detectQuantization(raw))
 */
export function loadLinearWeight(
  ckpt: Checkpoint,
  hfNames: string | readonly string[],
  backend: Backend,
  format: QuantConfig | null,
  transforms: readonly WeightTransform[] = [],
): Tensor | QuantizedWeight {
  const host = readQuantizedLinear(ckpt, hfNames, format, transforms);
  if (host) return uploadQuantWeight(host, backend);
  const names = typeof hfNames === 'string' ? [hfNames] : hfNames;
  const raw = applyWeightTransforms(names.length === 1 ? ckpt.read(names[0]!) : ckpt.readConcat(names), transforms);
  return backend.fromBytes(raw.shape, raw.dtype, raw.bytes, backend.activationDtype);
}

/** The host form of a quantized linear weight; null when the checkpoint stores it unquantized. */
export function readQuantizedLinear(
  ckpt: Checkpoint,
  hfNames: string | readonly string[],
  format: QuantConfig | null,
  transforms: readonly WeightTransform[] = [],
): HostQuantWeight | null {
  if (!format) return null;
  const names = typeof hfNames === 'string' ? [hfNames] : [...hfNames];
  const reader = quantFormatOf(format);
  const parts = names.map((n) => {
    const module = moduleOf(n);
    return module !== null && reader.hasModule(ckpt, module) ? reader.readModule(ckpt, module, format) : null;
  });
  if (parts.every((p) => p === null)) return null;
  const plain = names.filter((_, i) => parts[i] === null);
  if (plain.length) {
    throw unsupportedQuant(`cannot concatenate quantized and unquantized weights: ${plain.map((n) => `'${n}'`).join(', ')} ${plain.length > 1 ? 'are' : 'is'} not quantized, the rest of ${names.join(' | ')} are`, { names });
  }
  return applyRowTransforms(concatQuantWeights(parts as HostQuantWeight[], names), transforms, names);
}

/** Whether `hfName` exists in the checkpoint, as a plain tensor or as a quantized module. */
export function linearWeightExists(ckpt: Checkpoint, hfName: string, format: QuantConfig | null): boolean {
  if (ckpt.has(hfName)) return true;
  const module = moduleOf(hfName);
  return format !== null && module !== null && quantFormatOf(format).hasModule(ckpt, module);
}

/** Host weight -> backend tensors (codes as i32 words; scales, zeros and the input scale as f32). */
export function uploadQuantWeight(h: HostQuantWeight, backend: Backend): QuantizedWeight {
  const [N, K] = h.shape;
  const numG = numGroups(K, h.groupSize);
  return {
    kind: h.kind,
    shape: [N, K],
    groupSize: h.groupSize,
    qweight: backend.fromBytes([N, K / VALUES_PER_WORD[h.kind]], 'I32', wordBytes(h.qweight), 'i32'),
    scales: backend.fromF32(isPerTensor(h) ? [1] : [N, numG], h.scales, 'f32'),
    zeros: h.zeros ? backend.fromF32([N, numG], h.zeros, 'f32') : null,
    inputScale: h.inputScale === null ? null : backend.fromF32([1], Float32Array.of(h.inputScale), 'f32'),
  };
}

/** Free every tensor of a QuantizedWeight. */
export function freeQuantWeight(w: QuantizedWeight, backend: Backend): void {
  for (const t of [w.qweight, w.scales, w.zeros, w.inputScale]) if (t) backend.free(t);
}

/** Concatenate along N (packed q|k|v, gate|up); see the file comment for scales. */
export function concatQuantWeights(parts: readonly HostQuantWeight[], names: readonly string[] = []): HostQuantWeight {
  const first = parts[0]!;
  if (parts.length === 1) return first;
  const [, K] = first.shape;
  for (const [i, p] of parts.entries()) {
    if (p.kind !== first.kind || p.shape[1] !== K || p.groupSize !== first.groupSize) {
      throw unsupportedQuant(
        `cannot concatenate '${names[i] ?? i}' (${p.kind} [${p.shape.join(', ')}], group ${p.groupSize}) with '${names[0] ?? 0}' ` +
          `(${first.kind} [${first.shape.join(', ')}], group ${first.groupSize})`,
        { names },
      );
    }
  }
  const N = parts.reduce((a, p) => a + p.shape[0], 0);
  const numG = numGroups(K, first.groupSize);
  const qweight = new Int32Array(parts.reduce((a, p) => a + p.qweight.length, 0));
  let off = 0;
  for (const p of parts) {
    qweight.set(p.qweight, off);
    off += p.qweight.length;
  }
  const oneScale = parts.every((p) => isPerTensor(p) && p.scales[0] === first.scales[0]);
  const scales = oneScale ? Float32Array.of(first.scales[0]!) : stackRows(parts, (p) => p.scales, numG, (p) => (isPerTensor(p) ? p.scales[0]! : null));
  const zeros = parts.some((p) => p.zeros) ? stackRows(parts, (p) => p.zeros ?? new Float32Array(0), numG, (p) => (p.zeros ? null : INT4_SYM_ZERO)) : null;
  const inputs = parts.map((p) => p.inputScale).filter((s): s is number => s !== null);
  return { kind: first.kind, shape: [N, K], groupSize: first.groupSize, qweight, scales, zeros, inputScale: inputs.length ? Math.max(...inputs) : null };
}

/** per-row values [N_i, numG] of each part stacked; `fill(p)` non-null repeats one value over the part */
function stackRows(parts: readonly HostQuantWeight[], get: (p: HostQuantWeight) => Float32Array, numG: number, fill: (p: HostQuantWeight) => number | null): Float32Array {
  const out = new Float32Array(parts.reduce((a, p) => a + p.shape[0], 0) * numG);
  let off = 0;
  for (const p of parts) {
    const n = p.shape[0] * numG;
    const v = fill(p);
    if (v === null) out.set(get(p), off);
    else out.fill(v, off, off + n);
    off += n;
  }
  return out;
}

/** permuteBlocks / sliceRows on quantized rows; transforms that move K refuse. */
function applyRowTransforms(h: HostQuantWeight, transforms: readonly WeightTransform[], names: readonly string[]): HostQuantWeight {
  let w = h;
  for (const tr of transforms) {
    const N = w.shape[0];
    if (tr.kind === 'permuteBlocks') {
      if (tr.blockRows * tr.order.length !== N) throw unsupportedQuant(`${names.join(' | ')}: cannot permute ${N} quantized rows as ${tr.order.length} blocks of ${tr.blockRows}`, { names });
      w = gatherRows(w, Array.from({ length: N }, (_, r) => tr.order[Math.floor(r / tr.blockRows)]! * tr.blockRows + (r % tr.blockRows)));
    } else if (tr.kind === 'sliceRows') {
      w = gatherRows(w, Array.from({ length: N - tr.start }, (_, r) => r + tr.start));
    } else {
      throw unsupportedQuant(`${names.join(' | ')}: the '${tr.kind}' load transform is not supported on quantized weights`, { names, transform: tr.kind });
    }
  }
  return w;
}

/** Rows `rows` of a quantized weight (codes, and per-row scales and zeros), in that order. */
export function gatherRows(h: HostQuantWeight, rows: readonly number[]): HostQuantWeight {
  const [, K] = h.shape;
  const wpr = K / VALUES_PER_WORD[h.kind];
  const numG = numGroups(K, h.groupSize);
  const pick = (src: Float32Array, width: number) => {
    const out = new Float32Array(rows.length * width);
    rows.forEach((r, i) => out.set(src.subarray(r * width, (r + 1) * width), i * width));
    return out;
  };
  const qweight = new Int32Array(rows.length * wpr);
  rows.forEach((r, i) => qweight.set(h.qweight.subarray(r * wpr, (r + 1) * wpr), i * wpr));
  return {
    ...h,
    shape: [rows.length, K],
    qweight,
    scales: isPerTensor(h) ? h.scales : pick(h.scales, numG),
    zeros: h.zeros ? pick(h.zeros, numG) : null,
  };
}
