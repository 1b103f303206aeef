/** Backend selection: 'cpu' is always there; 'cuda' is loaded on demand (koffi + libcuda). */
import type { Backend } from './backend.js';
import { PeregrineError } from '../errors.js';

export type DeviceName = 'cpu' | 'cuda';

export async function createBackend(device: DeviceName, opts: { deviceId?: number } = {}): Promise<Backend> {
  if (device === 'cpu') {
    const { CpuBackend } = await import('./cpu/cpu-backend.js');
    return new CpuBackend();
  }
  if (device === 'cuda') {
    const { CudaBackend } = await import('./cuda/cuda-backend.js');
    return CudaBackend.create({ deviceId: opts.deviceId ?? 0 });
  }
  throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `unknown device "${String(device)}" (expected cpu or cuda)`, { param: 'device' });
}
