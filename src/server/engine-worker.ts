/**
 * The engine's thread: loads the LLM and serves the HTTP thread's requests over the worker's
 * MessagePort, so engine steps never block the HTTP event loop. Outgoing messages are batched:
 * everything produced in one turn of this thread's event loop goes out as one postMessage.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { LLM } from '../api/llm.js';
import type { StreamDelta } from '../api/outputs.js';
import { PeregrineError } from '../errors.js';
import type { EngineInfo, EngineStats, EngineWorkerData, FromWorker, ToWorker, WireError } from './engine-protocol.js';

const port = parentPort!;
const { modelDir, randomWeights, options } = workerData as EngineWorkerData;

let outbox: FromWorker[] = [];
function post(m: FromWorker): void {
  // a tick queued from a promise job runs once every pending job has run: one batch per turn
  if (outbox.length === 0) process.nextTick(flush);
  outbox.push(m);
}
function flush(): void {
  if (outbox.length === 0) return;
  const batch = outbox;
  outbox = [];
  port.postMessage(batch);
}

function toWireError(e: unknown): WireError {
  if (e instanceof PeregrineError) return { code: e.code, message: e.message, details: plainDetails(e.details) };
  return { code: 'UNKNOWN', message: (e as Error)?.message ?? String(e), details: {} };
}

function plainDetails(d: Record<string, unknown>): Record<string, unknown> {
  try {
    return structuredClone(d);
  } catch {
    return Object.fromEntries(Object.entries(d).filter(([, v]) => v === null || ['string', 'number', 'boolean'].includes(typeof v)));
  }
}

/** The engine's counters under the names the server reports. */
function toEngineStats(llm: LLM): EngineStats {
  const s = llm.stats();
  return {
    numRunning: s.numRunning,
    numWaiting: s.numWaiting,
    numBlocks: s.numKvBlocksTotal,
    numUsedBlocks: s.numKvBlocksUsed,
    numCachedBlocks: s.numKvBlocksCached,
    numFreeBlocks: s.numKvBlocksFree,
    prefixCacheHitRate: s.prefixCacheHitRate,
    numPreemptions: s.numPreemptions,
    steps: llm.tp === 1 ? llm.runner.stepTotals() : null,
  };
}

async function main(): Promise<void> {
  let llm: LLM;
  try {
    llm = randomWeights ? await LLM.random(randomWeights, options) : await LLM.load(modelDir, options);
  } catch (e) {
    post({ t: 'load-error', error: toWireError(e) });
    return;
  }
  const info: EngineInfo = {
    maxModelLen: llm.executor.maxModelLen,
    vocabSize: llm.spec.vocabSize,
    numKvBlocks: llm.executor.numBlocks,
    blockSize: llm.executor.blockSize,
    architecture: llm.spec.architecture,
    kvCacheDtype: llm.kvCacheDtype,
  };
  post({ t: 'ready', info });

  const live = new Map<string, AsyncIterator<unknown>>();
  let closing = false;

  const run = async (m: Extract<ToWorker, { t: 'add' }>) => {
    let it: AsyncIterator<StreamDelta>;
    try {
      it = llm.stream(m.promptTokenIds, m.params, m.id)[Symbol.asyncIterator]();
    } catch (e) {
      if (e instanceof PeregrineError && e.code === 'PGN_ERR_ENGINE_DEAD') return die(e);
      post({ t: 'error', id: m.id, error: toWireError(e) });
      return;
    }
    live.set(m.id, it);
    post({ t: 'accepted', id: m.id });
    try {
      for (;;) {
        const r = await it.next();
        if (r.done || !live.has(m.id)) break;
        post({ t: 'delta', id: m.id, delta: r.value });
      }
      if (live.has(m.id)) post({ t: 'end', id: m.id });
    } catch (e) {
      // a stream fails only when an engine step failed: the engine is unusable from here on
      die(e);
    } finally {
      live.delete(m.id);
    }
  };
  const die = (e: unknown) => {
    post({ t: 'fatal', error: toWireError(e) });
    flush();
    process.exit(1);
  };

  port.on('message', (m: ToWorker) => {
    try {
      switch (m.t) {
        case 'add':
          if (closing) post({ t: 'error', id: m.id, error: { code: 'PGN_ERR_ENGINE_DEAD', message: 'the engine is closing', details: {} } });
          else void run(m);
          break;
        case 'abort': {
          const it = live.get(m.id);
          live.delete(m.id);
          void it?.return?.();
          break;
        }
        case 'stats':
          post({ t: 'stats', seq: m.seq, stats: toEngineStats(llm) });
          break;
        case 'close':
          closing = true;
          for (const it of live.values()) void it.return?.();
          live.clear();
          void llm.close().finally(() => {
            post({ t: 'closed' });
            flush();
            port.close();
          });
          break;
      }
    } catch (e) {
      die(e);
    }
  });
}

void main();
