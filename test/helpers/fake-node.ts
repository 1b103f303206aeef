// A rank host ("node K") for test/parallel-multinode.test.ts, with fake workers
// (fake-tp-worker.ts): argv = masterPort nodeRank nnodes tp timeoutMs [modelDir].
// Prints "OK" once node 0 stopped its ranks, else "CODE: message", and exits 0 or 1.
import { isPeregrineError } from '../../src/errors.js';
import { runNodeHost } from '../../src/parallel/node-host.js';

const [port, nodeRank, nnodes, tp, timeoutMs, modelDir] = process.argv.slice(2);
try {
  await runNodeHost({
    nodes: { nnodes: Number(nnodes), nodeRank: Number(nodeRank), masterAddr: '127.0.0.1', masterPort: Number(port), timeoutMs: Number(timeoutMs) },
    tp: Number(tp),
    modelDir,
    workerUrl: new URL('./fake-tp-worker.js', import.meta.url),
  });
  process.stdout.write('OK');
} catch (e) {
  process.stdout.write(isPeregrineError(e) ? `${e.code}: ${e.message}` : String((e as Error)?.stack ?? e));
  process.exitCode = 1;
}
