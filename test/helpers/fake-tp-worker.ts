// A stand-in for src/parallel/tp-worker.ts in multi-node transport tests: speaks the same
// ToWorker / FromWorker messages over its IPC channel but loads nothing. It appends one JSON
// line per message to $PGN_FAKE_WORKER_LOG (init's rank, GPU and model; each step's token ids,
// whether they arrived as an Int32Array, and when). A model dir ending in "missing" fails the load.
import { appendFileSync } from 'node:fs';
import type { FromWorker, ToWorker } from '../../src/parallel/tp-protocol.js';

const log = (o: object) => process.env.PGN_FAKE_WORKER_LOG && appendFileSync(process.env.PGN_FAKE_WORKER_LOG, JSON.stringify(o) + '\n');
const send = (m: FromWorker) => process.send!(m);
let rank = -1, numSteps = 0, exitAtStep: number | undefined;

process.on('disconnect', () => process.exit(1));
process.on('message', (raw) => {
  const m = raw as ToWorker;
  if (m.t === 'init') {
    ({ rank, exitAtStep } = m.init);
    const dir = m.init.model.kind === 'dir' ? m.init.model.dir : null;
    log({ t: 'init', rank, deviceId: m.init.deviceId, dir, tp: m.init.tp });
    if (dir?.endsWith('missing')) {
      send({ t: 'error', code: 'PGN_ERR_CONFIG_NOT_FOUND', message: `no config.json in ${dir}` });
      setTimeout(() => process.exit(1), 50);
      return;
    }
    send({ t: 'loaded' });
  } else if (m.t === 'connect') {
    send({ t: 'ready' });
  } else if (m.t === 'step') {
    if (numSteps++ === exitAtStep) process.exit(1);
    log({ t: 'step', rank, tokenIds: Array.from(m.fb.tokenIds), typed: m.fb.tokenIds instanceof Int32Array, at: Date.now() });
  } else if (m.t === 'stop') {
    log({ t: 'stop', rank });
    process.exit(0);
  }
});
