/**
 * Starts a whole server: the engine worker (model loaded there), the tokenizer on this thread,
 * the HTTP app listening. Used by `peregrine serve`, the tests and the soak script.
 */
import * as path from 'node:path';
import type { LLMOptions } from '../api/llm.js';
import type { HfConfig } from '../models/config.js';
import { Tokenizer } from '../tokenizer/tokenizer.js';
import { createApp, type PeregrineApp } from './app.js';
import { EngineClient } from './engine-client.js';

export interface ServerOptions {
  /** the checkpoint folder; with randomWeights, only the model's name */
  readonly modelDir: string;
  /** benchmarks: serve a model of this config with random weights and no tokenizer (prompts as token ids) */
  readonly randomWeights?: HfConfig;
  /** default 127.0.0.1 */
  readonly host?: string;
  /** default 8000; 0 picks a free port */
  readonly port?: number;
  readonly apiKey?: string;
  /** default: the model folder's name */
  readonly servedModelName?: string;
  readonly maxBodyBytes?: number;
  /** LLM.load options for the engine */
  readonly engine?: Omit<LLMOptions, 'onLoadProgress'>;
}

export interface RunningServer {
  readonly url: string;
  readonly app: PeregrineApp;
  readonly engine: EngineClient;
  /** Stops admitting, waits for running requests, closes the listener and the engine. */
  shutdown(): Promise<void>;
}

/**
 * @throws PeregrineError what LLM.load throws (bad checkpoint, device missing, ...), or
 *   PGN_ERR_TOKENIZER_INVALID for an unreadable tokenizer.
 */
export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  const modelDir = path.resolve(opts.modelDir);
  const tokenizer = !opts.randomWeights && Tokenizer.exists(modelDir) ? await Tokenizer.load(modelDir) : null;
  const engine = await EngineClient.start({ modelDir, randomWeights: opts.randomWeights, options: opts.engine ?? {} });
  try {
    const app = createApp({
      engine,
      tokenizer,
      servedModelName: opts.servedModelName ?? path.basename(modelDir),
      modelDir,
      apiKey: opts.apiKey,
      maxBodyBytes: opts.maxBodyBytes,
    });
    const url = await app.listen(opts.port ?? 8000, opts.host ?? '127.0.0.1');
    let stopping: Promise<void> | null = null;
    const shutdown = () =>
      (stopping ??= (async () => {
        await app.drain();
        await app.close();
        await engine.close();
      })());
    return { url, app, engine, shutdown };
  } catch (e) {
    await engine.close();
    throw e;
  }
}
