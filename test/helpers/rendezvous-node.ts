// A "node" of a multi-node group for test/parallel-rendezvous.test.ts: joins the rendezvous at
// argv host:port as node argv[4] of argv[5] and prints the NCCL id it got as hex (or the error code).
import { joinRendezvous } from '../../src/parallel/rendezvous.js';
import { isPeregrineError } from '../../src/errors.js';

const [host, port, nodeRank, nnodes, timeoutMs] = process.argv.slice(2);
try {
  const id = await joinRendezvous({ host: host!, port: Number(port), nnodes: Number(nnodes), timeoutMs: Number(timeoutMs ?? 10_000) }, Number(nodeRank));
  process.stdout.write(Buffer.from(id).toString('hex'));
} catch (e) {
  process.stdout.write(isPeregrineError(e) ? `${e.code}: ${e.message}` : String(e));
  process.exitCode = 1;
}
