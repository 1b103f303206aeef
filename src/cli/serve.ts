/** `peregrine serve`: the OpenAI-compatible HTTP server. */
import type { LLMOptions } from '../api/llm.js';
import { startServer } from '../server/start-server.js';
import { SHAPES, shapeNames } from '../bench/shapes.js';
import type { HfConfig } from '../models/config.js';
import * as path from 'node:path';
import { quantizedCheckpointDir } from '../weights/quant/quantize-on-load.js';
import { QUANTIZATION_HELP, quantizationArg, quantizeProgress } from './quantize-on-load.js';
import { deviceArg, floatArg, intArg, kvCacheDtypeArg, parse, requireString, UsageError } from './args.js';
import { hostRanksIfRemote, NODE_OPTS, nodeOptions } from './nodes.js';

export const SERVE_HELP = `peregrine serve --model DIR [options]
       peregrine serve --shape NAME --random-weights [options]   (benchmarks: no tokenizer, token-id prompts)

Serves the model over an OpenAI-compatible HTTP API:
  GET /v1/models, POST /v1/completions, POST /v1/chat/completions (stream: true for SSE),
  GET /health, GET /metrics (Prometheus).

  --model DIR                    Hugging Face checkpoint folder (config.json + *.safetensors)
  --shape NAME --random-weights  a real model shape with random weights (${shapeNames().join(', ')}),
                                 for \`peregrine bench serve\`; prompts must be token ids
  --host HOST                    address to listen on (default 127.0.0.1)
  --port N                       port (default 8000; 0 picks a free one)
  --api-key KEY                  require "Authorization: Bearer KEY" on /v1/* (default: env
                                 PEREGRINE_API_KEY, else no key)
  --served-model-name NAME       the model name clients send (default: the folder's name)
  --device cpu|cuda              backend (default cpu)
  --tp N                         tensor-parallel ranks (default 1; must divide the heads): CPU
                                 worker threads, or one GPU each (0 .. N-1) with --device cuda
  --nnodes N                     multi-node tensor parallelism (--device cuda): N nodes of
                                 --tp/N GPUs each; the same command on every node (default 1)
  --node-rank K                  this node (default 0): node 0 serves HTTP and runs the
                                 scheduler; K > 0 only hosts its ranks
  --master-addr HOST             node 0's address (default 127.0.0.1)
  --master-port PORT             node 0's rendezvous port (default 29500)
  --max-model-len N              longest prompt + output (default: the model's context)
  --max-num-seqs N               most sequences in one engine step (default 256 on cuda, 64 on cpu)
  --max-num-batched-tokens N     token budget of one engine step (default 8192 on cuda, 2048 on cpu)
  --gpu-memory-utilization F     share of free GPU memory for the KV cache (default 0.9)
  --num-kv-blocks N              KV cache size in blocks (default: from the memory budget)
  ${QUANTIZATION_HELP}
  --kv-cache-dtype auto|fp8      KV cache storage: auto (the activation dtype, default) or fp8
                                 (E4M3: half the bytes, twice the blocks; the checkpoint's
                                 k/v scales where it has them, else 1.0)
  --max-waiting-requests N       requests allowed to wait for admission; more get 503
  --no-prefix-caching            do not reuse the KV blocks of repeated prompt prefixes

SIGTERM or SIGINT stops admitting (new requests get 503), lets running requests finish,
then exits; a second signal exits at once.
`;

/** @param hooks.onListening runs once the server accepts requests (npm start uses it for a first answer); resolving true shuts the server down */
export async function runServe(argv: string[], hooks: { onListening?: (url: string, modelName: string) => Promise<boolean> } = {}): Promise<void> {
  const a = parse(argv, {
    model: { type: 'string' },
    shape: { type: 'string' },
    'random-weights': { type: 'boolean' },
    host: { type: 'string' },
    port: { type: 'string' },
    'api-key': { type: 'string' },
    'served-model-name': { type: 'string' },
    device: { type: 'string' },
    tp: { type: 'string' },
    'max-model-len': { type: 'string' },
    'max-num-seqs': { type: 'string' },
    'max-num-batched-tokens': { type: 'string' },
    'gpu-memory-utilization': { type: 'string' },
    'num-kv-blocks': { type: 'string' },
    'kv-cache-dtype': { type: 'string' },
    quantization: { type: 'string' },
    'max-waiting-requests': { type: 'string' },
    'no-prefix-caching': { type: 'boolean' },
    ...NODE_OPTS,
  });
  if (a.help) {
    process.stdout.write(SERVE_HELP);
    return;
  }
  const port = intArg(a.port, 'port') ?? 8000;
  if (port < 0 || port > 65535) throw new UsageError(`--port must be in [0, 65535], got ${port}`);
  const device = deviceArg(a.device), tp = intArg(a.tp, 'tp');
  const engine: Omit<LLMOptions, 'onLoadProgress'> = {
    device,
    tp,
    ...nodeOptions(a, tp, device),
    maxModelLen: intArg(a['max-model-len'], 'max-model-len'),
    maxNumSeqs: intArg(a['max-num-seqs'], 'max-num-seqs'),
    maxNumBatchedTokens: intArg(a['max-num-batched-tokens'], 'max-num-batched-tokens'),
    gpuMemoryUtilization: floatArg(a['gpu-memory-utilization'], 'gpu-memory-utilization'),
    numKvBlocks: intArg(a['num-kv-blocks'], 'num-kv-blocks'),
    kvCacheDtype: kvCacheDtypeArg(a['kv-cache-dtype']),
    maxWaiting: intArg(a['max-waiting-requests'], 'max-waiting-requests'),
    enablePrefixCaching: a['no-prefix-caching'] ? false : undefined,
  };
  const randomWeights = randomShape(a);
  const quantization = quantizationArg(a.quantization);
  if (quantization && randomWeights) throw new UsageError('--quantization quantizes a checkpoint (--model DIR); random weights stay BF16 here');
  if (await hostRanksIfRemote({ ...engine, quantization }, randomWeights ? null : requireString(a.model, 'model'))) return; // node K > 0: no HTTP
  const modelDir = randomWeights ? String(a.shape) : requireString(a.model, 'model');
  // quantized here (with a progress bar, once: cached) so the engine thread loads the result as it is
  const loadDir = quantization ? await quantizedCheckpointDir(modelDir, { kind: quantization }, { onProgress: quantizeProgress(quantization) }) : modelDir;
  const server = await startServer({
    modelDir: loadDir,
    randomWeights,
    host: typeof a.host === 'string' ? a.host : undefined,
    port,
    apiKey: typeof a['api-key'] === 'string' ? a['api-key'] : process.env.PEREGRINE_API_KEY || undefined,
    servedModelName: typeof a['served-model-name'] === 'string' ? a['served-model-name'] : quantization ? path.basename(path.resolve(modelDir)) : undefined,
    engine: Object.fromEntries(Object.entries(engine).filter(([, v]) => v !== undefined)),
  });
  const { info } = server.engine;
  const name = server.app.context.servedModelName;
  process.stdout.write(
    `peregrine serve: ${name} (${info.architecture}, max_model_len ${info.maxModelLen}, ${info.numKvBlocks} KV blocks of ${info.blockSize} tokens, KV dtype ${info.kvCacheDtype ?? 'auto'})\n` +
      `listening on ${server.url}\n`,
  );
  let stopping = false;
  if (hooks.onListening) {
    const stop = await hooks.onListening(server.url, name).catch((e) => {
      process.stderr.write(`peregrine: ${(e as Error).message}\n`);
      return true;
    });
    if (stop) return server.shutdown();
  }
  void server.engine.died.then((reason) => {
    if (!stopping) process.stderr.write(`peregrine serve: ${reason}; answering 503 until restarted\n`);
  });

  await new Promise<void>((resolve, reject) => {
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) {
        process.stderr.write(`peregrine serve: ${signal} again, exiting now\n`);
        process.exit(1);
      }
      stopping = true;
      process.stderr.write(`peregrine serve: ${signal}: admitting no new requests, finishing ${server.app.inFlight} running\n`);
      server.shutdown().then(() => {
        process.off('SIGTERM', onSignal);
        process.off('SIGINT', onSignal);
        process.stderr.write('peregrine serve: stopped\n');
        resolve();
      }, reject);
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}

/** `--shape NAME --random-weights`: the shape's config; undefined without --shape */
function randomShape(a: Record<string, string | boolean | undefined>): HfConfig | undefined {
  if (a.shape === undefined && !a['random-weights']) return undefined;
  if (typeof a.shape !== 'string' || !a['random-weights']) throw new UsageError('--shape NAME and --random-weights go together');
  if (typeof a.model === 'string') throw new UsageError('give --model DIR or --shape NAME --random-weights, not both');
  const cfg = SHAPES[a.shape];
  if (!cfg) throw new UsageError(`unknown --shape "${a.shape}" (known: ${shapeNames().join(', ')})`);
  return cfg;
}
