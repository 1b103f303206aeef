/**
 * A tensor-parallel rank other than 0, as a worker thread (CPU) or a forked process (CUDA):
 * loads its shard, joins the communicator, then runs every step rank 0 sends it, in order.
 * Any error is reported to rank 0 and ends the worker; ending aborts the communicator, so
 * the other ranks fail fast instead of waiting at a collective.
 */
import { parentPort } from 'node:worker_threads';
import type { Backend } from '../backends/backend.js';
import { createBackend } from '../backends/index.js';
import { isPeregrineError } from '../errors.js';
import type { Communicator } from './communicator.js';
import { connect } from './connect.js';
import { loadShard, type LoadedShard } from './load-shard.js';
import { ModelRunner } from '../runner/model-runner.js';
import type { FromWorker, ToWorker, TpWorkerInit } from './tp-protocol.js';

interface Channel {
  send(m: FromWorker): void;
  onMessage(fn: (m: ToWorker) => void): void;
}

function openChannel(): Channel {
  if (parentPort) {
    const port = parentPort;
    return { send: (m) => port.postMessage(m), onMessage: (fn) => port.on('message', fn) };
  }
  if (process.send) {
    process.on('disconnect', () => process.exit(1)); // rank 0 is gone
    return { send: (m) => process.send!(m), onMessage: (fn) => process.on('message', fn as (m: unknown) => void) };
  }
  throw new Error('tp-worker runs as a worker thread or a forked process');
}

class TpWorker {
  private init!: TpWorkerInit;
  private backend: Backend | null = null;
  private shard: LoadedShard | null = null;
  private comm: Communicator | null = null;
  private runner: ModelRunner | null = null;
  private numSteps = 0;
  private stopping = false;

  constructor(private readonly channel: Channel) {
    process.on('exit', (code) => {
      if (!this.stopping) this.comm?.abort(`rank ${this.init?.rank ?? '?'} exited (code ${code})`);
    });
  }

  async handle(m: ToWorker): Promise<void> {
    switch (m.t) {
      case 'init': {
        this.init = m.init;
        this.backend = await createBackend(m.init.device, { deviceId: m.init.deviceId });
        this.shard = loadShard(m.init.model, this.backend, m.init.tp, m.init.rank);
        this.channel.send({ t: 'loaded' });
        return;
      }
      case 'connect': {
        const { init, backend, shard } = this.required();
        if (init.exitAtStep === -1) process.exit(1);
        this.comm = await connect(init.comm, init.rank, init.tp, backend);
        this.runner = new ModelRunner(backend, shard.rankSpec, shard.weights, m.runner, this.comm);
        this.channel.send({ t: 'ready' });
        return;
      }
      case 'step': {
        if (this.numSteps++ === this.init.exitAtStep) process.exit(1);
        await this.runner!.forwardStep(m.fb);
        return;
      }
      case 'stop': {
        this.stopping = true;
        this.runner?.dispose();
        this.comm?.dispose();
        this.backend?.dispose();
        process.exit(0);
      }
    }
  }

  fail(e: unknown): never {
    const code = isPeregrineError(e) ? e.code : 'PGN_ERR_INTERNAL';
    this.channel.send({ t: 'error', code, message: (e as Error)?.message ?? String(e) });
    process.exit(1);
  }

  private required(): { init: TpWorkerInit; backend: Backend; shard: LoadedShard } {
    if (!this.backend || !this.shard) throw new Error(`'connect' before 'init'`);
    return { init: this.init, backend: this.backend, shard: this.shard };
  }
}

const channel = openChannel();
const worker = new TpWorker(channel);
let queue = Promise.resolve();
channel.onMessage((m) => {
  queue = queue.then(() => worker.handle(m)).catch((e) => worker.fail(e));
});
