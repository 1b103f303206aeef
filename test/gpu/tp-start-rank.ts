// For test/gpu/nccl.test.ts, as a forked process: starts a tp 2 group on the CUDA devices whose rank 1
// exits when told to join NCCL, and reports how TpGroup.start ended: { code, message, ms } (or started).
// Exits at once after reporting: rank 0's NCCL init thread is still waiting for rank 1.
import { TpGroup } from '../../src/parallel/tp-group.js';
import { loadGolden } from '../helpers/golden.js';

const RUNNER = { numBlocks: 64, blockSize: 16, maxModelLen: 256, maxNumBatchedTokens: 256, maxNumSeqs: 8, maxNumLogits: 256 };
const t0 = Date.now();
let report: object;
try {
  const group = await TpGroup.start({ modelDir: loadGolden('llama-linear').dir, tp: 2, device: 'cuda', runner: RUNNER, exitAtStep: { rank: 1, step: -1 } });
  await group.dispose();
  report = { started: true };
} catch (e) {
  const err = e as { code?: string; message?: string };
  report = { code: err.code, message: err.message, ms: Date.now() - t0 };
}
process.send!(report, () => process.exit(0));
