// The multi-node flags (--nnodes --node-rank --master-addr --master-port) on generate, serve and
// bench, and their library options: usage errors that name the flag, CUDA only, node K > 0 only
// hosts ranks (and gives up, typed, when node 0 never answers). The transport: parallel-multinode.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer, type AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LLM } from '../src/api/llm.js';
import { TpGroup } from '../src/parallel/tp-group.js';
import { loadGolden } from './helpers/golden.js';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli', 'main.js');
const MODEL = loadGolden('llama-linear').dir;

function cli(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env } });
    let stdout = '', stderr = '';
    c.stdout.on('data', (d) => (stdout += d));
    c.stderr.on('data', (d) => (stderr += d));
    c.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

const GEN = ['generate', '--model', MODEL, '--prompt-ids', '1,2,3'];

test('flag errors name the flag, on generate, serve and bench (exit 2, nothing loaded)', async () => {
  const cases: Array<[string[], RegExp]> = [
    [[...GEN, '--tp', '2', '--nnodes', '2'], /usage error: multi-node tensor parallelism \(nnodes 2\) needs --device cuda/],
    [[...GEN, '--device', 'cuda', '--tp', '3', '--nnodes', '2'], /usage error: --tp 3 must be a multiple of --nnodes 2/],
    [[...GEN, '--device', 'cuda', '--nnodes', '2'], /usage error: --tp 1 must be a multiple of --nnodes 2/],
    [['serve', '--model', MODEL, '--device', 'cuda', '--tp', '2', '--nnodes', '2', '--node-rank', '2'], /usage error: --node-rank must be in 0\.\.1 with --nnodes 2, got 2/],
    [['bench', 'throughput', '--shape', 'llama-3.1-8b', '--random-weights', '--device', 'cuda', '--tp', '2', '--nnodes', '2', '--master-port', '70000'], /usage error: --master-port must be in \[1, 65535\], got 70000/],
    [['bench', 'latency', '--shape', 'llama-3.1-8b', '--random-weights', '--device', 'cuda', '--tp', '2', '--nnodes', 'two'], /usage error: --nnodes expects an integer, got "two"/],
  ];
  const results = await Promise.all(cases.map(([args]) => cli(args)));
  results.forEach((r, i) => {
    assert.equal(r.code, 2, `${cases[i]![0].join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, cases[i]![1]);
  });
});

test('node 1 with no node 0 gives up within PEREGRINE_NODE_TIMEOUT_MS: PGN_ERR_ENGINE_DEAD naming the address', async () => {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  const t0 = Date.now();
  const r = await cli([...GEN, '--device', 'cuda', '--tp', '2', '--nnodes', '2', '--node-rank', '1', '--master-port', String(port)], { PEREGRINE_NODE_TIMEOUT_MS: '500' });
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, new RegExp(`error \\[PGN_ERR_ENGINE_DEAD\\]: node 1 got no NCCL id from the rendezvous at 127\\.0\\.0\\.1:${port} within 500 ms`));
  assert.match(r.stderr, /node 1 of 2: ranks 1\.\.1 on GPUs 0/);
  assert.equal(r.stdout, '');
  assert.ok(Date.now() - t0 < 5_000);
});

test('library: multi-node is CUDA only, node K > 0 hosts ranks instead of loading, node 0 does not host', async () => {
  const bad = (param: string, re: RegExp) => (e: any) => e.code === 'PGN_ERR_INVALID_ARGUMENT' && e.details?.param === param && re.test(e.message);
  await assert.rejects(LLM.load(MODEL, { tp: 2, nnodes: 2 }), bad('device', /needs device 'cuda'/));
  await assert.rejects(LLM.load(MODEL, { device: 'cuda', tp: 2, nnodes: 2, nodeRank: 1 }), bad('node_rank', /node 1 of 2 does not load the LLM/));
  await assert.rejects(LLM.hostRanks(MODEL, { device: 'cuda', tp: 2 }), bad('node_rank', /nodeRank > 0/));
  await assert.rejects(LLM.load(MODEL, { device: 'cuda', tp: 4, nnodes: 3 }), bad('tp', /--tp 4 must be a multiple of --nnodes 3/));
  await assert.rejects(TpGroup.start({ modelDir: MODEL, tp: 2, nodes: { nnodes: 2, nodeRank: 0, masterAddr: '127.0.0.1', masterPort: 29500 }, runner: { numBlocks: 4, blockSize: 16, maxModelLen: 64, maxNumBatchedTokens: 64, maxNumSeqs: 1 } }), bad('device', /needs the CUDA backend/));
});
