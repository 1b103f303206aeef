// Multi-node tensor parallelism without GPUs: the length-prefixed v8 frames over TCP, node 0
// (NodeLinks + TpPeers in this process) driving rank hosts in other processes (fake-node.ts,
// whose workers are fake-tp-worker.ts: no model, no communicator), and every failure typed and
// bounded: a node that never joins, one started with another --tp, one that dies mid-run, a
// node 0 that goes away, a worker that exits.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, connect, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NodeLinks } from '../src/parallel/node-links.js';
import { runNodeHost } from '../src/parallel/node-host.js';
import { ranksOfNode, type MultiNode } from '../src/parallel/node-protocol.js';
import { encodeFrame, FramedSocket } from '../src/parallel/tcp-transport.js';
import { TpPeers } from '../src/parallel/tp-peers.js';
import type { TpWorkerInit } from '../src/parallel/tp-protocol.js';
import type { ForwardBatch } from '../src/runner/forward-batch.js';

const HOST = '127.0.0.1';
const FAKE_NODE = fileURLToPath(new URL('./helpers/fake-node.js', import.meta.url));

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, HOST, r));
  const { port } = s.address() as AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

async function socketPair(): Promise<[Socket, Socket]> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, HOST, r));
  const accepted = new Promise<Socket>((r) => server.once('connection', r));
  const client = connect({ host: HOST, port: (server.address() as AddressInfo).port });
  const s = await accepted;
  server.close();
  return [client, s];
}

function batch(ids: number[]): ForwardBatch {
  const n = ids.length;
  return {
    numSeqs: 1, numTokens: n, tokenIds: Int32Array.from(ids), positions: Int32Array.from(ids, (_, i) => i), slotMapping: Int32Array.from(ids, (_, i) => i),
    cuSeqlensQ: Int32Array.of(0, n), contextLens: Int32Array.of(n), blockTables: Int32Array.of(0), maxBlocksPerSeq: 1, logitsIndices: Int32Array.of(n - 1),
  } as ForwardBatch;
}

interface FakeNode { child: ChildProcess; result: Promise<{ code: number | null; out: string }> }

/** fake-node.ts as node `nodeRank`; its workers log to `logFile` */
function startNode(port: number, nodeRank: number, nnodes: number, tp: number, logFile: string, timeoutMs = 5_000, modelDir?: string): FakeNode {
  const child = spawn(process.execPath, [FAKE_NODE, String(port), String(nodeRank), String(nnodes), String(tp), String(timeoutMs), ...(modelDir ? [modelDir] : [])], {
    env: { ...process.env, PGN_FAKE_WORKER_LOG: logFile }, stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  return { child, result: new Promise((resolve) => child.on('exit', (code) => resolve({ code, out }))) };
}

function readLog(file: string): Array<Record<string, unknown>> {
  try {
    return readFileSync(file, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
  } catch {
    return [];
  }
}

/** node 0's side of a group of `tp` ranks over `nnodes`: ranks 1.. that live on other nodes */
function remoteInits(tp: number, nnodes: number, dir = '/node0/model', exitAtStep?: { rank: number; step: number }): TpWorkerInit[] {
  return Array.from({ length: tp }, (_, r) => r).filter((r) => r >= tp / nnodes).map((rank) => ({
    model: { kind: 'dir', dir }, tp, rank, device: 'cuda', deviceId: rank, comm: { kind: 'nccl', uniqueId: [] },
    exitAtStep: exitAtStep?.rank === rank ? exitAtStep.step : undefined,
  }));
}

function nodes(port: number, nnodes: number, timeoutMs = 5_000): MultiNode {
  return { nnodes, nodeRank: 0, masterAddr: HOST, masterPort: port, timeoutMs };
}

test('frames: typed arrays and nested messages survive any split of the byte stream', async () => {
  const [a, b] = await socketPair();
  const msgs = [{ t: 'to', rank: 3, m: { t: 'step', fb: batch([5, 6, 7, 2 ** 31 - 1]) } }, { t: 'kill', rank: 1 }, { t: 'from', rank: 2, m: { t: 'error', code: 'X', message: 'é'.repeat(70_000) } }];
  const got: unknown[] = [];
  const reader = new FramedSocket<unknown, never>(b, 'test peer');
  const all = new Promise<void>((resolve) => reader.onMessage((m) => { got.push(m); if (got.length === msgs.length) resolve(); }));
  const frames = msgs.map((m) => encodeFrame(m));
  const bytes = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
  frames.reduce((at, f) => (bytes.set(f, at), at + f.length), 0);
  for (let at = 0; at < bytes.length;) { // uneven pieces, some mid-header
    const n = [1, 3, 7, 4096, 65_537][at % 5]!;
    a.write(bytes.subarray(at, at + n));
    at += n;
    if (at % 3 === 0) await new Promise((r) => setImmediate(r));
  }
  await all;
  assert.deepEqual(got, msgs);
  assert.ok((got[0] as { m: { fb: ForwardBatch } }).m.fb.tokenIds instanceof Int32Array);
  const closed = new Promise<string>((r) => reader.onClose(r));
  a.write(Uint8Array.of(0xff, 0xff, 0xff, 0x7f)); // a 2 GiB length: not one of ours
  assert.match(await closed, /test peer sent a frame of 2147483647 bytes/);
  a.destroy();
});

test('node 0 drives the ranks of another node process: init with that node\'s GPUs and model, steps in order, stop', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'pgn-mn-'));
  const logFile = join(dir, 'workers.jsonl');
  try {
    const port = await freePort();
    const node1 = startNode(port, 1, 2, 4, logFile, 5_000, '/node1/model');
    const links = await NodeLinks.accept(nodes(port, 2), 4, new Uint8Array(randomBytes(128)));
    assert.deepEqual([1, 2, 3].map((r) => links.hosts(r)), [false, true, true]);
    const peers = new TpPeers(remoteInits(4, 2), 'process', { remote: links });
    await peers.waitAll('loaded');
    await peers.send({ t: 'connect', runner: { numBlocks: 8, blockSize: 16, maxModelLen: 64, maxNumBatchedTokens: 64, maxNumSeqs: 4 } });
    await peers.waitAll('ready');
    for (const ids of [[1, 2, 3], [4], [5]]) await peers.send({ t: 'step', fb: batch(ids) });
    // rank 0 may block its thread right after sending a step (a driver call waiting for a collective the
    // other ranks join only once they have the step): the frame must be written before send returns
    const sent = peers.send({ t: 'step', fb: batch([6]) });
    const blockedAt = Date.now();
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 3_000); // long enough for a loaded 2-core CI machine
    const blockEnd = Date.now();
    await sent;
    await new Promise((r) => setTimeout(r, 200));
    await peers.stop();
    links.close();
    const { code, out } = await node1.result;
    assert.equal(out, 'OK');
    assert.equal(code, 0);
    assert.equal(peers.dead, null);
    const log = readLog(logFile);
    const inits = log.filter((l) => l.t === 'init').sort((x, y) => Number(x.rank) - Number(y.rank));
    assert.deepEqual(inits, [ // GPUs 0, 1 of node 1; its own checkpoint path
      { t: 'init', rank: 2, deviceId: 0, dir: '/node1/model', tp: 4 },
      { t: 'init', rank: 3, deviceId: 1, dir: '/node1/model', tp: 4 },
    ]);
    for (const rank of [2, 3]) {
      const steps = log.filter((l) => l.t === 'step' && l.rank === rank);
      assert.deepEqual(steps.map((s) => s.tokenIds), [[1, 2, 3], [4], [5], [6]], `rank ${rank} steps`);
      const last = Number(steps.at(-1)!.at);
      assert.ok(last >= blockedAt && last < blockEnd, `rank ${rank} had step 4 while node 0's thread was blocked (${last - blockedAt} ms into a ${blockEnd - blockedAt} ms block)`);
      assert.ok(steps.every((s) => s.typed));
      assert.ok(log.some((l) => l.t === 'stop' && l.rank === rank));
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a node that never joins fails node 0 within the timeout, naming the node', async () => {
  const port = await freePort();
  const t0 = Date.now();
  await assert.rejects(NodeLinks.accept(nodes(port, 3, 400), 3, new Uint8Array(128)), (e: any) => e.code === 'PGN_ERR_ENGINE_DEAD' && /node\(s\) 1, 2 of 3 did not join within 400 ms/.test(e.message));
  assert.ok(Date.now() - t0 < 3_000);
});

test('a node with no node 0 gives up within its timeout, naming the address', async () => {
  const port = await freePort();
  const t0 = Date.now();
  await assert.rejects(runNodeHost({ nodes: { ...nodes(port, 2, 400), nodeRank: 1 }, tp: 2 }), (e: any) => e.code === 'PGN_ERR_ENGINE_DEAD' && e.message.includes(`${HOST}:${port}`));
  assert.ok(Date.now() - t0 < 3_000);
});

test('a node started with another --tp is refused on both sides', async () => {
  const port = await freePort();
  const node1 = startNode(port, 1, 2, 4, '');
  await assert.rejects(NodeLinks.accept(nodes(port, 2), 2, new Uint8Array(128)), (e: any) => e.code === 'PGN_ERR_INVALID_ARGUMENT' && /node 1 \(.*\) was started with --tp 4, node 0 with --tp 2/.test(e.message));
  const { code, out } = await node1.result;
  assert.equal(code, 1);
  assert.match(out, /^PGN_ERR_INVALID_ARGUMENT: node 0 refused node 1: .*--tp 4, node 0 with --tp 2/);
});

test('a node killed mid-run is a dead rank on node 0: PGN_ERR_ENGINE_DEAD naming the node and rank', async () => {
  const port = await freePort();
  const node1 = startNode(port, 1, 2, 2, '');
  const links = await NodeLinks.accept(nodes(port, 2), 2, new Uint8Array(128));
  const peers = new TpPeers(remoteInits(2, 2), 'process', { remote: links });
  const died = new Promise<Error>((r) => peers.onDeath(r));
  await peers.waitAll('loaded');
  node1.child.kill('SIGKILL');
  const e = await died as any;
  assert.equal(e.code, 'PGN_ERR_ENGINE_DEAD');
  assert.match(e.message, /tensor-parallel rank 1 exited \(node 1 at 127\.0\.0\.1:\d+ is gone: /);
  await assert.rejects(peers.waitAll('ready'), (x: any) => x.code === 'PGN_ERR_ENGINE_DEAD');
  await peers.send({ t: 'step', fb: batch([1]) }); // dropped, no throw, no hang
  await peers.stop();
  links.close();
});

test('a remote worker that exits, or fails to load, is reported with its node', async () => {
  const port = await freePort();
  const node1 = startNode(port, 1, 2, 2, '');
  const links = await NodeLinks.accept(nodes(port, 2), 2, new Uint8Array(128));
  const peers = new TpPeers(remoteInits(2, 2, '/node0/model', { rank: 1, step: 1 }), 'process', { remote: links });
  await peers.waitAll('loaded');
  await peers.send({ t: 'connect', runner: { numBlocks: 8, blockSize: 16, maxModelLen: 64, maxNumBatchedTokens: 64, maxNumSeqs: 4 } });
  await peers.waitAll('ready');
  const died = new Promise<Error>((r) => peers.onDeath(r));
  await peers.send({ t: 'step', fb: batch([1]) });
  await peers.send({ t: 'step', fb: batch([2]) });
  assert.match((await died).message, /tensor-parallel rank 1 exited \(code 1 on node 1\)/);
  await peers.stop();
  links.close();
  assert.equal((await node1.result).out, 'OK'); // node 0 stopped it: a clean end for the host

  const port2 = await freePort();
  const node2 = startNode(port2, 1, 2, 2, '', 5_000);
  const links2 = await NodeLinks.accept(nodes(port2, 2), 2, new Uint8Array(128));
  const peers2 = new TpPeers(remoteInits(2, 2, '/models/missing'), 'process', { remote: links2 });
  await assert.rejects(peers2.waitAll('loaded'), (e: any) => e.code === 'PGN_ERR_CONFIG_NOT_FOUND' && /rank 1 failed: no config.json in \/models\/missing/.test(e.message));
  await peers2.stop();
  links2.close();
  await node2.result;
});

test('node 0 going away mid-run stops the node\'s workers and fails the host with PGN_ERR_ENGINE_DEAD', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'pgn-mn-'));
  try {
    const port = await freePort();
    const node1 = startNode(port, 1, 2, 4, join(dir, 'w.jsonl'));
    const links = await NodeLinks.accept(nodes(port, 2), 4, new Uint8Array(128));
    const peers = new TpPeers(remoteInits(4, 2), 'process', { remote: links });
    await peers.waitAll('loaded');
    links.close(); // as if node 0 crashed: no stop
    const t0 = Date.now();
    const { code, out } = await node1.result;
    assert.equal(code, 1);
    assert.match(out, /^PGN_ERR_ENGINE_DEAD: node 1 lost node 0 at 127\.0\.0\.1:\d+ \(.*\) while ranks 2, 3 were running/);
    assert.ok(Date.now() - t0 < 4_000);
    assert.deepEqual(ranksOfNode(4, 2, 1), [2, 3]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
