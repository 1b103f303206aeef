// The TCP rendezvous of multi-node groups, on loopback only: node 0 in this process, the other
// "nodes" as separate processes; the 128-byte NCCL id must arrive intact, and every failure is
// bounded and typed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { joinRendezvous, RendezvousServer } from '../src/parallel/rendezvous.js';

const HOST = '127.0.0.1';
const NODE = fileURLToPath(new URL('./helpers/rendezvous-node.js', import.meta.url));
const run = promisify(execFile);

async function node(port: number, rank: number, nnodes: number): Promise<string> {
  try {
    return (await run(process.execPath, [NODE, HOST, String(port), String(rank), String(nnodes), '5000'])).stdout;
  } catch (e) {
    return (e as { stdout: string }).stdout;
  }
}

test('node 0 hands its 128-byte id to the other nodes, each a separate process', async () => {
  const id = new Uint8Array(randomBytes(128));
  const server = await RendezvousServer.listen({ host: HOST, port: 0, nnodes: 3, timeoutMs: 10_000 }, id);
  const [one, two] = await Promise.all([node(server.port, 1, 3), node(server.port, 2, 3)]);
  await server.done;
  assert.equal(one, Buffer.from(id).toString('hex'));
  assert.equal(two, Buffer.from(id).toString('hex'));
});

test('a node started with another --nnodes, or a rank out of range, is refused by name', async () => {
  const server = await RendezvousServer.listen({ host: HOST, port: 0, nnodes: 2, timeoutMs: 3_000 }, new Uint8Array(randomBytes(128)));
  const wrongCount = await node(server.port, 1, 3);
  assert.match(wrongCount, /^PGN_ERR_INVALID_ARGUMENT: .*--nnodes 3, node 0 with 2/);
  await assert.rejects(joinRendezvous({ host: HOST, port: server.port, nnodes: 2, timeoutMs: 2_000 }, 5), (e: any) => e.code === 'PGN_ERR_INVALID_ARGUMENT' && /--node-rank 5 is outside 1\.\.1/.test(e.message));
  const ok = await node(server.port, 1, 2);
  assert.equal(ok.length, 256);
  await server.done;
});

test('a node that never comes fails the rendezvous within its timeout, naming the node', async () => {
  const server = await RendezvousServer.listen({ host: HOST, port: 0, nnodes: 3, timeoutMs: 300 }, new Uint8Array(randomBytes(128)));
  const joiner = joinRendezvous({ host: HOST, port: server.port, nnodes: 3, timeoutMs: 600 }, 1);
  await assert.rejects(server.done, (e: any) => e.code === 'PGN_ERR_ENGINE_DEAD' && /node\(s\) 2 of 3 did not join within 300 ms/.test(e.message));
  await assert.rejects(joiner, (e: any) => e.code === 'PGN_ERR_ENGINE_DEAD');
});

test('joining a master that is not there gives up after the timeout', async () => {
  const closed = await RendezvousServer.listen({ host: HOST, port: 0, nnodes: 1 }, new Uint8Array(randomBytes(128)));
  await closed.done; // one node: done at once, the port is free again
  const t0 = Date.now();
  await assert.rejects(joinRendezvous({ host: HOST, port: closed.port, nnodes: 2, timeoutMs: 400 }, 1), (e: any) => e.code === 'PGN_ERR_ENGINE_DEAD' && e.message.includes(`${HOST}:${closed.port}`));
  assert.ok(Date.now() - t0 < 2_000);
});
