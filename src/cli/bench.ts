/** `peregrine bench throughput | latency | ppl | serve | build`. */
import { readFileSync } from 'node:fs';
import { LLM, type LLMOptions } from '../api/llm.js';
import { SHAPES, shapeNames } from '../bench/shapes.js';
import { deviceArg, floatArg, intArg, kvCacheDtypeArg, parse, requireString, UsageError, type OptionSpec } from './args.js';
import { ProgressBar } from './progress.js';
import { quantizationArg, quantizeProgress } from './quantize-on-load.js';
import { hostRanksIfRemote, NODE_HELP, NODE_OPTS, nodeOptions } from './nodes.js';

export const BENCH_HELP = `peregrine bench <throughput|latency|ppl|serve|build> [options]

  throughput   offline: all requests at once with ignore_eos; total output tok/s, req/s
               (--model DIR | --shape NAME --random-weights) [--isl 128] [--osl 128]
               [--num-requests 256] [--max-num-seqs 256] [--max-num-batched-tokens 8192]
               [--temperature 0]  (0: greedy, as trtllm-bench; 1 samples as vLLM's
               benchmark_throughput does; top-p 1)
               [--tp N]  (tensor parallel over N ranks)
  latency      decode ms/step per batch size, prefill TFLOP/s, bandwidth against a device copy
               (--model DIR | --shape NAME --random-weights) [--batch 1,8,64,256]
               [--isl 128] [--osl 128] [--prefill 128,2048] [--tp N]
               [--baseline FILE]  (bench/hf_baseline.py output: adds the "vs HF" column)
               [--profile]  (per batch, one more step eagerly: time and bytes per op, the graph,
               uploads and sampling, linears vs cuBLASLt; one device)
               (with --tp N the group is timed through rank 0; bytes per step are per GPU)
  ppl          perplexity of a checkpoint on a text file (non-overlapping windows)
               --model DIR --text FILE [--window 128] [--max-windows N]
               (ppl drives one device's runner: no --tp)
  serve        client against a running server: Poisson arrivals, TTFT / TPOT / ITL
               --url URL [--num-prompts 200] [--rate R|inf] [--isl 128] [--osl 128]
               [--model NAME] [--api-key KEY] [--vocab-size 32000]
  build        time \`peregrine build\` on a real shape: writes a random BF16 checkpoint, quantizes it
               --shape NAME [--quantization fp8,int8,int4] [--dir DIR] [--jobs N]

Multi-node (throughput, latency; --device cuda; the same command on every node, only node 0 prints):
${NODE_HELP}
Common: --device cpu|cuda, --json, --kv-cache-dtype auto|fp8 (throughput, latency: fp8 = E4M3
KV cache, half the bytes a token). Shapes: ${shapeNames().join(', ')}.
Random weights: --quantization fp8 makes the layers' linears E4M3 (per-tensor scales), int8 / int4
weight-only (per channel / symmetric groups of 128); with --tp N every rank makes its own shard
of the same model. With --model DIR, --quantization fp8|int8|int4 quantizes the checkpoint at load
(once: the build is cached under $PEREGRINE_CACHE_DIR or ~/.cache/peregrine).
`;

const MODEL_OPTS: OptionSpec = {
  model: { type: 'string' }, shape: { type: 'string' }, 'random-weights': { type: 'boolean' },
  device: { type: 'string' }, isl: { type: 'string' }, osl: { type: 'string' }, json: { type: 'boolean' },
  'max-num-seqs': { type: 'string' }, 'max-num-batched-tokens': { type: 'string' }, 'max-model-len': { type: 'string' },
  tp: { type: 'string' }, quantization: { type: 'string' }, 'kv-cache-dtype': { type: 'string' },
  ...NODE_OPTS,
};
const RANDOM_QUANTIZATIONS = ['fp8', 'int8', 'int4'] as const;

/** null on node K > 0 of a multi-node group, once node 0 has stopped its ranks */
async function loadBenchModel(a: Record<string, string | boolean | undefined>, defaults: LLMOptions): Promise<{ llm: LLM; label: string } | null> {
  const device = deviceArg(a.device);
  const options: LLMOptions = {
    ...defaults,
    device,
    ...nodeOptions(a, intArg(a.tp, 'tp'), device),
    maxNumSeqs: intArg(a['max-num-seqs'], 'max-num-seqs') ?? defaults.maxNumSeqs,
    maxNumBatchedTokens: intArg(a['max-num-batched-tokens'], 'max-num-batched-tokens') ?? defaults.maxNumBatchedTokens,
    maxModelLen: intArg(a['max-model-len'], 'max-model-len') ?? defaults.maxModelLen,
    tp: intArg(a.tp, 'tp'),
    kvCacheDtype: kvCacheDtypeArg(a['kv-cache-dtype']),
  };
  const tpLabel = (options.tp ?? 1) > 1 ? ` (tp ${options.tp})` : '';
  const quantization = a.quantization === undefined ? null : String(a.quantization);
  if (typeof a.model === 'string') {
    const kind = quantizationArg(quantization ?? undefined);
    const withQuant = { ...options, quantization: kind, onQuantizeProgress: kind ? quantizeProgress(kind) : undefined };
    if (await hostRanksIfRemote(withQuant, a.model)) return null;
    return { llm: await LLM.load(a.model, withQuant), label: `${a.model}${kind ? ` (${kind})` : ''}${tpLabel}` };
  }
  if (typeof a.shape !== 'string' || !a['random-weights']) throw new UsageError('give --model DIR, or --shape NAME with --random-weights');
  const cfg = SHAPES[a.shape];
  if (!cfg) throw new UsageError(`unknown --shape "${a.shape}" (known: ${shapeNames().join(', ')})`);
  if (quantization !== null && !(RANDOM_QUANTIZATIONS as readonly string[]).includes(quantization)) {
    throw new UsageError(`--quantization with random weights expects ${RANDOM_QUANTIZATIONS.join(', ')}, got "${quantization}"`);
  }
  const q = quantization as (typeof RANDOM_QUANTIZATIONS)[number] | null;
  if (await hostRanksIfRemote(options, null)) return null;
  return { llm: await LLM.random(cfg, options, 0, q), label: `${a.shape} (random${q ? ` ${q}` : ''} weights)${tpLabel}` };
}

/** decode ms/step by batch from bench/hf_baseline.py's JSON line (the last line of the file) */
function readBaseline(path: string): Map<number, number> {
  const last = readFileSync(path, 'utf8').trim().split('\n').at(-1)!;
  const j = JSON.parse(last) as { decode_ms?: Record<string, number> };
  return new Map(Object.entries(j.decode_ms ?? {}).map(([b, ms]) => [Number(b), ms]));
}

function list(v: string | boolean | undefined, def: number[], name: string): number[] {
  if (v === undefined) return def;
  return String(v).split(',').map((x) => {
    const n = Number(x);
    if (!Number.isInteger(n) || n <= 0) throw new UsageError(`--${name}: "${x}" is not a positive integer`);
    return n;
  });
}

export async function runBench(argv: string[]): Promise<void> {
  const [sub, ...rest] = argv;
  if (!sub || sub === '--help' || sub === '-h') {
    process.stdout.write(BENCH_HELP);
    return;
  }
  if (sub === 'throughput') {
    const a = parse(rest, { ...MODEL_OPTS, 'num-requests': { type: 'string' }, temperature: { type: 'string' } });
    if (a.help) return void process.stdout.write(BENCH_HELP);
    const isl = intArg(a.isl, 'isl') ?? 128, osl = intArg(a.osl, 'osl') ?? 128;
    const loaded = await loadBenchModel(a, { maxNumSeqs: 256, maxNumBatchedTokens: 8192, maxModelLen: isl + osl + 16 });
    if (!loaded) return;
    const { llm, label } = loaded;
    const { runThroughput, throughputTable } = await import('../bench/throughput.js');
    try {
      const r = await runThroughput(llm, { numRequests: intArg(a['num-requests'], 'num-requests') ?? 256, isl, osl, temperature: floatArg(a.temperature, 'temperature') });
      process.stdout.write(a.json ? JSON.stringify({ model: label, device: llm.device, tp: llm.tp, ...r }) + '\n' : throughputTable(r, label) + '\n');
    } finally {
      await llm.close();
    }
    return;
  }
  if (sub === 'latency') {
    const a = parse(rest, { ...MODEL_OPTS, batch: { type: 'string' }, prefill: { type: 'string' }, baseline: { type: 'string' }, profile: { type: 'boolean' } });
    if (a.help) return void process.stdout.write(BENCH_HELP);
    const batchSizes = list(a.batch, [1, 8, 64, 256], 'batch');
    const prefillLens = list(a.prefill, [128, 2048], 'prefill');
    const isl = intArg(a.isl, 'isl') ?? 128, osl = intArg(a.osl, 'osl') ?? 128;
    const maxB = Math.max(...batchSizes);
    if (a.profile && (intArg(a.tp, 'tp') ?? 1) > 1) throw new UsageError('--profile runs one device\'s runner: drop --tp');
    const loaded = await loadBenchModel(a, { maxNumSeqs: maxB, maxNumBatchedTokens: Math.max(...prefillLens, isl, maxB), maxModelLen: Math.max(isl + osl, ...prefillLens) + 16 });
    if (!loaded) return;
    const { llm, label } = loaded;
    const { runLatency, latencyTables } = await import('../bench/latency.js');
    try {
      const r = await runLatency(llm, { batchSizes, isl, osl, prefillLens, profile: a.profile === true });
      const hf = typeof a.baseline === 'string' ? readBaseline(a.baseline) : undefined;
      process.stdout.write(a.json ? JSON.stringify({ model: label, device: llm.device, tp: llm.tp, ...r }) + '\n' : `${label} on ${llm.device}\n\n${latencyTables(r, hf)}\n`);
    } finally {
      await llm.close();
    }
    return;
  }
  if (sub === 'ppl') {
    const a = parse(rest, { model: { type: 'string' }, text: { type: 'string' }, window: { type: 'string' }, 'max-windows': { type: 'string' }, device: { type: 'string' }, json: { type: 'boolean' } });
    if (a.help) return void process.stdout.write(BENCH_HELP);
    const window = intArg(a.window, 'window') ?? 128;
    const model = requireString(a.model, 'model');
    const text = readFileSync(requireString(a.text, 'text'), 'utf8');
    const llm = await LLM.load(model, { device: deviceArg(a.device), maxModelLen: window, maxNumBatchedTokens: window, maxNumSeqs: 1, numKvBlocks: Math.ceil(window / 16) });
    try {
      if (!llm.tokenizer) throw new UsageError('bench ppl needs a model with a tokenizer');
      const { computePerplexity } = await import('../bench/perplexity.js');
      const { ModelRunner } = await import('../runner/model-runner.js');
      const runner = new ModelRunner(llm.backend, llm.spec, llm.runner.weights, { numBlocks: Math.ceil(window / 16), blockSize: 16, maxModelLen: window, maxNumBatchedTokens: window, maxNumSeqs: 1, maxNumLogits: window });
      const r = await computePerplexity(runner, llm.tokenizer.encode(text), window, intArg(a['max-windows'], 'max-windows'));
      process.stdout.write(a.json ? JSON.stringify({ model, ...r }) + '\n' : `${model}: ppl ${r.ppl.toFixed(4)} (nll ${r.nll.toFixed(5)}) over ${r.numWindows} windows of ${window} tokens\n`);
    } finally {
      await llm.close();
    }
    return;
  }
  if (sub === 'build') {
    const a = parse(rest, { shape: { type: 'string' }, quantization: { type: 'string' }, dir: { type: 'string' }, jobs: { type: 'string' }, json: { type: 'boolean' } });
    if (a.help) return void process.stdout.write(BENCH_HELP);
    const shape = requireString(a.shape, 'shape');
    const config = SHAPES[shape];
    if (!config) throw new UsageError(`unknown --shape "${shape}" (known: ${shapeNames().join(', ')})`);
    const kinds = String(a.quantization ?? 'fp8,int8,int4').split(',').map((k) => k.trim());
    for (const k of kinds) if (!['fp8', 'int8', 'int4'].includes(k)) throw new UsageError(`--quantization takes fp8, int8, int4 (comma-separated), got "${k}"`);
    const { runBuildBench, buildBenchTable } = await import('../bench/build-bench.js');
    const r = await runBuildBench({
      config, label: shape, kinds: kinds as Array<'fp8' | 'int8' | 'int4'>, dir: typeof a.dir === 'string' ? a.dir : undefined, jobs: intArg(a.jobs, 'jobs'),
      onLine: a.json ? undefined : (line) => process.stderr.write(`${line}\n`),
    });
    process.stdout.write(a.json ? JSON.stringify(r) + '\n' : buildBenchTable(r) + '\n');
    return;
  }
  if (sub === 'serve') {
    const a = parse(rest, {
      url: { type: 'string' }, model: { type: 'string' }, 'api-key': { type: 'string' }, 'num-prompts': { type: 'string' },
      rate: { type: 'string' }, isl: { type: 'string' }, osl: { type: 'string' }, 'vocab-size': { type: 'string' }, json: { type: 'boolean' },
    });
    if (a.help) return void process.stdout.write(BENCH_HELP);
    const { runServeBench, serveBenchTable } = await import('../bench/serve-client.js');
    const rate = a.rate === undefined || a.rate === 'inf' ? Infinity : floatArg(a.rate, 'rate')!;
    const numPrompts = intArg(a['num-prompts'], 'num-prompts') ?? 200;
    const bar = a.json ? null : new ProgressBar(process.stderr, 'bench serve');
    const r = await runServeBench({
      url: requireString(a.url, 'url'), model: typeof a.model === 'string' ? a.model : undefined, apiKey: typeof a['api-key'] === 'string' ? a['api-key'] : undefined,
      numPrompts, rate, isl: intArg(a.isl, 'isl') ?? 128, osl: intArg(a.osl, 'osl') ?? 128, vocabSize: intArg(a['vocab-size'], 'vocab-size'),
      onProgress: bar ? (d, n) => bar.update(d, n, `${d}/${n} requests`) : undefined,
    });
    bar?.done();
    process.stdout.write(a.json ? JSON.stringify(r) + '\n' : serveBenchTable(r) + '\n');
    return;
  }
  throw new UsageError(`unknown bench "${sub}" (throughput, latency, ppl, serve, build)`);
}
