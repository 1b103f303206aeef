// One GPU rank of test/gpu/nccl.test.ts, as a forked process: joins the NCCL group whose id it
// is sent, on device `rank`, runs the shared collectives in f32 and bf16, and sends back the results.
import { CudaBackend } from '../../src/backends/cuda/cuda-backend.js';
import { NcclCommunicator } from '../../src/parallel/nccl.js';
import { runCollectives } from '../helpers/comm-rank.js';

process.once('message', async (m: { id: number[]; rank: number; size: number }) => {
  try {
    const backend = CudaBackend.create({ deviceId: m.rank });
    const comm = await NcclCommunicator.create(backend, Uint8Array.from(m.id), m.rank, m.size);
    const f32 = await runCollectives(comm, backend, 'f32');
    const bf16 = await runCollectives(comm, backend, 'bf16');
    comm.dispose();
    backend.dispose();
    process.send!({ f32, bf16 });
  } catch (e) {
    process.send!({ error: (e as Error).message });
  }
  process.disconnect();
});
