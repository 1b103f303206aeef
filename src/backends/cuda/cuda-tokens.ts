/** The token-id op of kernels/tokens.cu (async scheduling): inputs read from the previous step's sampled ids. */
import type { Tensor } from '../backend.js';
import type { CudaBackend } from './cuda-backend.js';
import { i32Tensor, requireCount } from './op-checks.js';

const THREADS = 256;

/** tokenIds[t] = src[srcIndex[t]] where 0 <= srcIndex[t] < src.numel; other entries are kept. */
export function gatherTokenIds(b: CudaBackend, tokenIdsT: Tensor, srcT: Tensor, srcIndexT: Tensor, numTokens: number): void {
  const op = 'gatherTokenIds';
  requireCount(numTokens, op, 'numTokens');
  const tokenIds = i32Tensor(tokenIdsT, op, 'tokenIds', numTokens);
  const src = i32Tensor(srcT, op, 'src', 0);
  const srcIndex = i32Tensor(srcIndexT, op, 'srcIndex', numTokens);
  if (numTokens === 0) return;
  const kernel = b.kernels.module.kernel('gather_token_ids', ['ptr', 'ptr', 'ptr', 'i32', 'i32']);
  kernel.launch(Math.ceil(numTokens / THREADS), THREADS, 0, b.stream, [tokenIds.ptr, src.ptr, srcIndex.ptr, numTokens, src.numel]);
}
