/**
 * Soak test of the HTTP server: `clients` streaming clients on loopback send completions and
 * chats for `durationMs`, cancelling a share of them at a random point; then it checks the
 * server is healthy, no KV block is still held and memory stayed flat.
 *
 *   node dist/src/bench/soak.js --clients 64 --minutes 10            # starts `peregrine serve` itself
 *   node dist/src/bench/soak.js --url http://127.0.0.1:8000 --seconds 30
 *   node dist/src/bench/soak.js --seconds 60 --serve-arg='--num-kv-blocks 512'
 *
 * Exits 1 when anything but the cancels failed (errors, a crash, leaked blocks).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { driveClient, type ClientTally } from './soak-client.js';

export interface SoakOptions {
  /** a running server; without it one is started on `model` */
  readonly url?: string;
  /** default: the tiny test fixture test/fixtures/models/llama-gqa-llama3 */
  readonly model?: string;
  readonly clients: number;
  readonly durationMs: number;
  /** share of requests cancelled at a random point (default 0.3) */
  readonly cancelRate?: number;
  /** largest max_tokens a request asks for (default 64) */
  readonly maxTokens?: number;
  /** `peregrine serve` options for the server started here (default {@link DEFAULT_SERVE_ARGS}) */
  readonly serveArgs?: readonly string[];
  readonly log?: (line: string) => void;
}

export interface SoakReport {
  durationS: number;
  clients: number;
  requestsServed: number;
  requestsCancelled: number;
  errors: number;
  errorSamples: string[];
  crashes: number;
  outputTokens: number;
  /** KV blocks still held by sequences once every client stopped */
  leakedBlocks: number;
  healthyAtEnd: boolean;
  /** resident memory of the server after warm-up and at the end */
  rssWarmBytes: number;
  rssEndBytes: number;
  rssGrowthBytes: number;
}

/**
 * A KV pool the run touches whole during warm-up (64 clients need about 512 blocks), so RSS
 * growth after it measures leaks, not the first touch of a large pool's pages.
 */
export const DEFAULT_SERVE_ARGS = ['--num-kv-blocks', '1024'];
const DEFAULT_MODEL = fileURLToPath(new URL('../../../test/fixtures/models/llama-gqa-llama3', import.meta.url));
/** the memory baseline is taken after 20% of the run, but not before 30 s or half of it */
const warmupMs = (durationMs: number) => Math.max(0.2 * durationMs, Math.min(30_000, 0.5 * durationMs));
const IDLE_TIMEOUT_MS = 10_000;
const PROGRESS_INTERVAL_MS = Number(process.env.PEREGRINE_SOAK_PROGRESS_MS ?? 10_000);

/** Starts `peregrine serve` in a child process on a free port; resolves with its URL. */
async function startServe(model: string, extra: readonly string[]): Promise<{ child: ChildProcess; url: string }> {
  const serveJs = fileURLToPath(new URL('../cli/serve.js', import.meta.url));
  const code = `import(${JSON.stringify(pathToFileURL(serveJs).href)}).then((m) => m.runServe(process.argv.slice(1))).catch((e) => { console.error(e); process.exit(1); })`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', code, '--', '--model', model, '--port', '0', ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d) => {
      out += d;
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (m) resolve(m[1]!);
    });
    child.once('exit', (c) => reject(new Error(`peregrine serve exited (code ${c}) before listening:\n${stderr}`)));
  });
  return { child, url };
}

async function scrape(url: string): Promise<Map<string, number>> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const values = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line === '') continue;
    const space = line.lastIndexOf(' ');
    values.set(line.slice(0, space).replace(/,?model_name="[^"]*"/, '').replace('{}', ''), Number(line.slice(space + 1)));
  }
  return values;
}

async function waitIdle(url: string): Promise<number> {
  const deadline = Date.now() + IDLE_TIMEOUT_MS;
  for (;;) {
    const m = await scrape(url);
    const used = m.get('peregrine_kv_cache_blocks{state="used"}') ?? NaN;
    const busy = (m.get('peregrine_num_requests_running') ?? 0) + (m.get('peregrine_num_requests_waiting') ?? 0);
    if ((used === 0 && busy === 0) || Date.now() > deadline) return used;
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function runSoak(opts: SoakOptions): Promise<SoakReport> {
  const log = opts.log ?? (() => {});
  const server = opts.url ? null : await startServe(opts.model ?? DEFAULT_MODEL, opts.serveArgs ?? DEFAULT_SERVE_ARGS);
  const url = opts.url ?? server!.url;
  let crashes = 0;
  let crashed = false;
  server?.child.once('exit', (c, sig) => {
    crashed = true;
    crashes++;
    log(`server exited during the soak (code ${c}, signal ${sig})`);
  });
  try {
    const t0 = Date.now();
    const deadline = t0 + opts.durationMs;
    const tally: ClientTally = { served: 0, cancelled: 0, errors: 0, errorSamples: [] };
    const tokensAtStart = (await scrape(url)).get('peregrine_generation_tokens_total') ?? 0;
    let rssWarmBytes = NaN;
    const warm = setTimeout(async () => {
      rssWarmBytes = (await scrape(url).catch(() => new Map())).get('process_resident_memory_bytes') ?? NaN;
    }, warmupMs(opts.durationMs));
    const progress = setInterval(async () => {
      const rss = (await scrape(url).catch(() => new Map())).get('process_resident_memory_bytes') ?? NaN;
      log(`${((Date.now() - t0) / 1000).toFixed(0)} s: ${tally.served} served, ${tally.cancelled} cancelled, ${tally.errors} errors, server RSS ${(rss / 2 ** 20).toFixed(1)} MiB`);
    }, PROGRESS_INTERVAL_MS);
    await Promise.all(
      Array.from({ length: opts.clients }, (_, i) =>
        driveClient(url, i, tally, { deadline, cancelRate: opts.cancelRate ?? 0.3, maxTokens: opts.maxTokens ?? 64, stop: () => crashed }),
      ),
    );
    clearTimeout(warm);
    clearInterval(progress);
    const durationS = (Date.now() - t0) / 1000;
    const leakedBlocks = crashed ? NaN : await waitIdle(url);
    const healthyAtEnd = !crashed && (await fetch(`${url}/health`).then((r) => r.ok, () => false));
    const end = crashed ? new Map<string, number>() : await scrape(url);
    const rssEndBytes = end.get('process_resident_memory_bytes') ?? NaN;
    return {
      durationS,
      clients: opts.clients,
      requestsServed: tally.served,
      requestsCancelled: tally.cancelled,
      errors: tally.errors,
      errorSamples: tally.errorSamples,
      crashes,
      outputTokens: (end.get('peregrine_generation_tokens_total') ?? NaN) - tokensAtStart,
      leakedBlocks,
      healthyAtEnd,
      rssWarmBytes,
      rssEndBytes,
      rssGrowthBytes: rssEndBytes - rssWarmBytes,
    };
  } finally {
    if (server && !crashed) {
      server.child.removeAllListeners('exit');
      const exited = new Promise<number | null>((r) => server.child.once('exit', (c) => r(c)));
      server.child.kill('SIGTERM');
      const code = await exited;
      if (code !== 0) log(`server exited with code ${code} after SIGTERM`);
    }
  }
}

export function formatReport(r: SoakReport): string {
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  const rows: Array<[string, string]> = [
    ['duration', `${r.durationS.toFixed(1)} s, ${r.clients} clients`],
    ['requests served', `${r.requestsServed} (${(r.requestsServed / r.durationS).toFixed(1)}/s)`],
    ['requests cancelled', String(r.requestsCancelled)],
    ['output tokens', String(r.outputTokens)],
    ['errors', String(r.errors)],
    ['crashes', String(r.crashes)],
    ['KV blocks held at end', String(r.leakedBlocks)],
    ['healthy at end', String(r.healthyAtEnd)],
    ['RSS after warm-up', mib(r.rssWarmBytes)],
    ['RSS at end', `${mib(r.rssEndBytes)} (growth ${mib(r.rssGrowthBytes)})`],
  ];
  const w = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${k.padEnd(w)}  ${v}`).join('\n') + (r.errorSamples.length ? `\nfirst errors:\n  ${r.errorSamples.join('\n  ')}` : '');
}

export function soakPassed(r: SoakReport): boolean {
  return r.errors === 0 && r.crashes === 0 && r.leakedBlocks === 0 && r.healthyAtEnd;
}

async function main(argv: string[]): Promise<number> {
  const { values: a } = parseArgs({
    args: argv,
    options: {
      clients: { type: 'string', default: '64' },
      minutes: { type: 'string' },
      seconds: { type: 'string' },
      url: { type: 'string' },
      model: { type: 'string' },
      'cancel-rate': { type: 'string' },
      'max-tokens': { type: 'string' },
      'serve-arg': { type: 'string', multiple: true },
      json: { type: 'boolean' },
    },
  });
  const durationMs = a.seconds ? Number(a.seconds) * 1000 : Number(a.minutes ?? '10') * 60_000;
  const report = await runSoak({
    url: a.url,
    model: a.model,
    clients: Number(a.clients),
    durationMs,
    cancelRate: a['cancel-rate'] === undefined ? undefined : Number(a['cancel-rate']),
    maxTokens: a['max-tokens'] === undefined ? undefined : Number(a['max-tokens']),
    serveArgs: a['serve-arg']?.flatMap((s) => s.split(' ')),
    log: (l) => process.stderr.write(`soak: ${l}\n`),
  });
  process.stdout.write((a.json ? JSON.stringify(report) : formatReport(report)) + '\n');
  return soakPassed(report) ? 0 : 1;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).then((code) => (process.exitCode = code), (e) => {
    process.stderr.write(`soak: ${(e as Error).stack ?? e}\n`);
    process.exitCode = 2;
  });
}
