/** The paged KV pool on a backend: one K and one V tensor per layer. */
import { bytesPerElement, type Backend, type LayerKvCache } from '../backends/backend.js';
import type { ModelSpec } from '../models/spec.js';

export const DEFAULT_BLOCK_SIZE = 16;

export class KvCachePool {
  readonly layers: LayerKvCache[] = [];

  constructor(
    private readonly backend: Backend,
    spec: ModelSpec,
    readonly numBlocks: number,
    readonly blockSize: number,
  ) {
    const rows = numBlocks * blockSize;
    const width = spec.numKvHeads * spec.headDim;
    for (let i = 0; i < spec.numLayers; i++) {
      this.layers.push({ k: backend.empty([rows, width], backend.activationDtype), v: backend.empty([rows, width], backend.activationDtype) });
    }
  }

  /** bytes one block takes across all layers (K and V) */
  static bytesPerBlock(spec: ModelSpec, blockSize: number, backend: Backend): number {
    return 2 * spec.numLayers * blockSize * spec.numKvHeads * spec.headDim * bytesPerElement(backend.activationDtype);
  }

  dispose(): void {
    for (const l of this.layers) {
      this.backend.free(l.k);
      this.backend.free(l.v);
    }
    this.layers.length = 0;
  }
}
