// Multi-node tensor parallelism on one host: two "nodes" of one GPU each over 127.0.0.1
// (processes with CUDA_VISIBLE_DEVICES=0 and =1), NCCL between them (the custom all-reduce
// counts them as different hosts). Skips with fewer than 2 GPUs.
//  - node 0 in this process (TpGroup with `nodes`), node 1 the `peregrine generate --node-rank 1`
//    command: TP = 1 logits within bf16 tolerance and the same greedy ids away from near-ties
//    (as test/gpu/nccl.test.ts);
//  - both nodes as `peregrine generate --json` commands: the same greedy ids as single-host tp 2
//    over NCCL (two-operand sums: bit-identical), and as tp 1 where the margins allow;
//  - node 1 killed mid-run: node 0's next step fails with PGN_ERR_ENGINE_DEAD naming it, no hang.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { writeSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { CudaBackend } from '../../src/backends/cuda/cuda-backend.js';
import { LLMEngine } from '../../src/engine/llm-engine.js';
import { loadModel } from '../../src/models/load-model.js';
import { TpGroup } from '../../src/parallel/tp-group.js';
import { buildForwardBatch } from '../../src/runner/input-builder.js';
import { ModelRunner } from '../../src/runner/model-runner.js';
import { simpleGenerate } from '../../src/runner/simple-generate.js';
import { makeSamplingParams } from '../../src/sampling/index.js';
import { loadGolden } from '../helpers/golden.js';
import { gpuCount } from './cuda-harness.js';

/**
 * NCCL as between real nodes: bootstrap and data over TCP sockets on loopback (no P2P / shared
 * memory between the "nodes"; two processes that see different GPU sets would otherwise judge
 * P2P reachability differently). Node 0 runs in this process in two tests: set before its NCCL init.
 */
const NCCL_AS_NODES = { NCCL_NVLS_ENABLE: '0', NCCL_SOCKET_IFNAME: 'lo', NCCL_P2P_DISABLE: '1', NCCL_SHM_DISABLE: '1', NCCL_IB_DISABLE: '1' };
Object.assign(process.env, NCCL_AS_NODES);

const GPUS = gpuCount();
const skip = GPUS >= 2 ? false : `needs 2 GPUs, found ${GPUS}`;
const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const FIXTURE = 'llama-linear';
const RUNNER = { numBlocks: 64, blockSize: 16, maxModelLen: 256, maxNumBatchedTokens: 256, maxNumSeqs: 8, maxNumLogits: 256 };
/** max |TP logit - TP1 logit| / max |logit| in bf16 (different summation order) */
const REL_TOL = 4e-2;
/** each command's limit: loading a tiny model and 24 tokens take seconds */
const COMMAND_TIMEOUT_MS = 120_000;
/** NCCL over loopback on one host; the nodes wait for each other at most this long */
const NODE_ENV = { ...NCCL_AS_NODES, PEREGRINE_NODE_TIMEOUT_MS: '60000' };

/**
 * PEREGRINE_TEST_TRACE=1: milestones written straight to fd 2 (no event-loop turn needed), so a run killed
 * while a native call blocks this thread (NCCL init, a stream wait) still shows how far it got.
 */
function trace(msg: string): void {
  if (process.env.PEREGRINE_TEST_TRACE === '1') writeSync(2, `[multinode ${new Date().toISOString()}] ${msg}\n`);
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

interface Command { child: ChildProcess; result: Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }>; output(): string }

/** `peregrine ...args` with CUDA_VISIBLE_DEVICES=gpus, killed after COMMAND_TIMEOUT_MS */
function peregrine(args: string[], gpus: string, env: Record<string, string> = {}): Command {
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...NODE_ENV, ...env, CUDA_VISIBLE_DEVICES: gpus } });
  let stdout = '', stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), COMMAND_TIMEOUT_MS);
  const result = new Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }>((resolve) => child.on('exit', (code, signal) => {
    clearTimeout(timer);
    resolve({ code, signal, stdout, stderr });
  }));
  return { child, result, output: () => `$ CUDA_VISIBLE_DEVICES=${gpus} peregrine ${args.join(' ')}\n--- stdout\n${stdout}\n--- stderr\n${stderr}` };
}

function generateArgs(dir: string, promptIds: readonly number[], maxTokens: number, extra: string[]): string[] {
  return ['generate', '--model', dir, '--prompt-ids', promptIds.join(','), '--max-tokens', String(maxTokens), '--temperature', '0', '--ignore-eos', '--device', 'cuda', ...extra];
}

function nodeFlags(port: number, nodeRank: number): string[] {
  return ['--tp', '2', '--nnodes', '2', '--node-rank', String(nodeRank), '--master-addr', '127.0.0.1', '--master-port', String(port)];
}

/** token_ids of `generate --json`'s last line, or a failure showing the command's output */
async function jsonIds(c: Command): Promise<number[]> {
  const r = await c.result;
  assert.equal(r.code, 0, `exit ${r.code} (${r.signal ?? 'no signal'})\n${c.output()}`);
  const last = r.stdout.trim().split('\n').at(-1) ?? '';
  return (JSON.parse(last) as { token_ids: number[] }).token_ids;
}

/** the largest relative logits error between node 0's group and TP = 1, measured by the first test */
let measuredErr: number | null = null;

test(`${FIXTURE}: node 0 here, node 1 a peregrine command on the other GPU: TP = 1 logits within bf16 tolerance, same greedy ids`, { skip, timeout: 240_000 }, async () => {
  const g = loadGolden(FIXTURE);
  const port = await freePort();
  const c = g.cases[0]!;
  trace(`test 1: node 1 starting (port ${port})`);
  const node1 = peregrine(generateArgs(g.dir, c.promptIds, 4, nodeFlags(port, 1)), '1');
  const backend = CudaBackend.create({ deviceId: 0 });
  const model = loadModel(g.dir, backend);
  const ref = new ModelRunner(backend, model.spec, model.weights, { ...RUNNER, enableCudaGraphs: false });
  let group: TpGroup | null = null;
  try {
    trace('test 1: group starting');
    group = await TpGroup.start({ modelDir: g.dir, tp: 2, device: 'cuda', deviceIds: [0], runner: RUNNER, nodes: { nnodes: 2, nodeRank: 0, masterAddr: '127.0.0.1', masterPort: port, timeoutMs: 60_000 } });
    trace('test 1: group started');
    // the custom all-reduce maps peers' memory over CUDA IPC: not across nodes, so NCCL does every collective
    const refusal = (group as unknown as { comm: { customRefusal?: string | null } }).comm.customRefusal;
    assert.match(String(refusal), /rank 1 runs on another host|PEREGRINE_CUSTOM_ALLREDUCE=0/);
    let maxRel = 0;
    for (const [ci, cs] of g.cases.entries()) {
      const ids = [...cs.promptIds];
      const fb = buildForwardBatch([{ seq: { tokenIds: ids, numCachedTokens: 0, blockTable: Array.from({ length: Math.ceil(ids.length / 16) }, (_, j) => j) }, numNewTokens: ids.length }], 16, 16);
      const all = { ...fb, logitsIndices: Int32Array.from(ids, (_, i) => i) };
      const want = await ref.forward(all);
      trace(`test 1: case ${ci} forward`);
      const got = await group.forward(all);
      let err = 0, scale = 0;
      for (let i = 0; i < want.length; i++) { err = Math.max(err, Math.abs(want[i]! - got[i]!)); scale = Math.max(scale, Math.abs(want[i]!)); }
      assert.ok(err / scale < REL_TOL, `case ${ci}: max |error| ${err} of scale ${scale}`);
      maxRel = Math.max(maxRel, err / scale);
      if (cs.minGreedyMargin <= 4 * err) continue; // a near-tie: the ids are not decided by the model
      const single = await simpleGenerate(ref, [cs.promptIds], { temperature: 0, maxTokens: cs.greedyIds.length, ignoreEos: true });
      const engine = new LLMEngine(group, { maxNumSeqs: 8, maxNumBatchedTokens: 256 });
      engine.addRequest({ requestId: 'a', promptTokenIds: cs.promptIds, params: makeSamplingParams({ temperature: 0, maxTokens: cs.greedyIds.length, ignoreEos: true }) });
      let greedy: number[] = [];
      while (engine.hasUnfinishedRequests()) for (const o of await engine.step()) greedy = o.outputTokenIds;
      assert.deepEqual(greedy, single.tokenIds[0], `case ${ci}: greedy ids`);
      trace(`test 1: case ${ci} greedy ids agree`);
    }
    measuredErr = maxRel;
  } catch (e) {
    node1.child.kill('SIGKILL');
    const r = await node1.result;
    throw new Error(`${(e as Error).message}\nnode 1:\n${node1.output()} (exit ${r.code})`, { cause: e });
  } finally {
    trace('test 1: disposing');
    await group?.dispose();
    ref.dispose();
    backend.dispose();
  }
  trace('test 1: waiting for node 1 to exit');
  const r = await node1.result;
  assert.equal(r.code, 0, `node 1 should exit 0 once node 0 stopped its rank\n${node1.output()}`);
  assert.equal(r.stdout, '', 'node 1 prints nothing on stdout');
  assert.match(r.stderr, /node 1: stopped/);
});

test(`${FIXTURE}: both nodes as peregrine generate --json: the ids of single-host tp 2 over NCCL, and of tp 1 away from near-ties`, { skip, timeout: 300_000 }, async () => {
  const g = loadGolden(FIXTURE);
  const widest = g.cases.reduce((best, c, i) => (c.minGreedyMargin > g.cases[best]!.minGreedyMargin ? i : best), 0); // the case tp 1 can best be compared on
  for (const [ci, c] of [[widest, g.cases[widest]!] as const]) {
    const n = c.greedyIds.length;
    const port = await freePort();
    const node1 = peregrine(generateArgs(g.dir, c.promptIds, n, nodeFlags(port, 1)), '1');
    const node0 = peregrine([...generateArgs(g.dir, c.promptIds, n, nodeFlags(port, 0)), '--json'], '0');
    trace(`test 2: both nodes started (port ${port})`);
    const multi = await jsonIds(node0).catch((e) => { node1.child.kill('SIGKILL'); throw e; });
    trace('test 2: node 0 done; single-host tp 2 next');
    const r1 = await node1.result;
    assert.equal(r1.code, 0, node1.output());
    const oneHost = await jsonIds(peregrine([...generateArgs(g.dir, c.promptIds, n, ['--tp', '2']), '--json'], '0,1', { PEREGRINE_CUSTOM_ALLREDUCE: '0' }));
    assert.deepEqual(multi, oneHost, `case ${ci}: 2 nodes vs one host, tp 2 over NCCL`);
    trace('test 2: tp 1 next');
    const tp1 = await jsonIds(peregrine([...generateArgs(g.dir, c.promptIds, n, []), '--json'], '0'));
    let scale = 0;
    for (const v of c.greedyLogits) scale = Math.max(scale, Math.abs(v));
    if (measuredErr !== null && c.minGreedyMargin > 4 * measuredErr * scale) assert.deepEqual(multi, tp1, `case ${ci}: 2 nodes vs tp 1`);
    assert.equal(multi.length, n);
  }
});

test('node 1 killed mid-run: node 0\'s next step fails with PGN_ERR_ENGINE_DEAD naming node 1 and rank 1, without a hang', { skip, timeout: 180_000 }, async () => {
  const g = loadGolden(FIXTURE);
  const port = await freePort();
  const node1 = peregrine(generateArgs(g.dir, [1, 2, 3], 4, nodeFlags(port, 1)), '1');
  let group: TpGroup | null = null;
  try {
    group = await TpGroup.start({ modelDir: g.dir, tp: 2, device: 'cuda', deviceIds: [0], runner: RUNNER, nodes: { nnodes: 2, nodeRank: 0, masterAddr: '127.0.0.1', masterPort: port, timeoutMs: 60_000 } });
    const fb = buildForwardBatch([{ seq: { tokenIds: [1, 2, 3], numCachedTokens: 0, blockTable: [0] }, numNewTokens: 3 }], 16, 16);
    trace('test 3: group started');
    await group.forward(fb);
    node1.child.kill('SIGKILL');
    await node1.result;
    trace('test 3: node 1 killed');
    const t0 = Date.now();
    await assert.rejects(async () => { for (;;) await group!.forward(fb); }, (e: any) => e.code === 'PGN_ERR_ENGINE_DEAD' && /rank 1 exited \(node 1 at 127\.0\.0\.1:\d+ is gone/.test(e.message));
    assert.ok(Date.now() - t0 < 30_000);
    trace('test 3: the step failed as it should');
  } finally {
    node1.child.kill('SIGKILL');
    trace('test 3: disposing');
    await group?.dispose();
    trace('test 3: disposed');
  }
});
