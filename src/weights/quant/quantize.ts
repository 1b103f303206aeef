/** BF16 / F16 / F32 weights -> each quantized kind (round to nearest, no calibration data). */
import type { HostQuantWeight, QuantKind } from './types.js';
import { DEFAULT_GROUP_SIZE } from './types.js';
import { quantizeFp8, type Fp8ScaleMode } from './fp8.js';
import { quantizeInt4 } from './int4.js';
import { quantizeInt8 } from './int8.js';

export interface QuantizeOptions {
  readonly kind: QuantKind;
  /** fp8: one scale per tensor (default) or per output channel */
  readonly fp8Scale?: Fp8ScaleMode;
  /** int4 group size along K (default 128); int8 is per channel unless given */
  readonly groupSize?: number;
  /** int4 (default true) */
  readonly symmetric?: boolean;
  /** int4: scales rounded up to f16 and zero points >= minZero, for formats that store them so */
  readonly f16Scales?: boolean;
  readonly minZero?: number;
}

/** w [N, K] row-major f32 -> the canonical quantized weight of `opts.kind`. */
export function quantizeWeight(w: Float32Array, N: number, K: number, opts: QuantizeOptions, name = 'weight'): HostQuantWeight {
  switch (opts.kind) {
    case 'fp8':
      return quantizeFp8(w, N, K, opts.fp8Scale ?? 'tensor', name);
    case 'int8':
      return quantizeInt8(w, N, K, opts.groupSize ?? K, name);
    case 'int4':
      return quantizeInt4(w, N, K, {
        groupSize: opts.groupSize ?? DEFAULT_GROUP_SIZE,
        symmetric: opts.symmetric ?? true,
        f16Scales: opts.f16Scales,
        minZero: opts.minZero,
      }, name);
  }
}
