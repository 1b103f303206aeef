/** Worker thread of QuantizePool: quantizes one linear weight per message. */
import { parentPort } from 'node:worker_threads';
import { isPeregrineError } from '../../errors.js';
import { runTask, transferList, type QuantizeTask, type WorkerReply } from './quantize-pool.js';

parentPort?.on('message', (msg: QuantizeTask & { id: number }) => {
  let reply: WorkerReply;
  try {
    const tensors = runTask(msg);
    reply = { id: msg.id, tensors };
    parentPort!.postMessage(reply, transferList(tensors));
  } catch (e) {
    reply = { id: msg.id, error: isPeregrineError(e) ? { code: e.code, message: e.message, details: e.details } : { message: (e as Error)?.message ?? String(e) } };
    parentPort!.postMessage(reply);
  }
});
