// The profiler's device timing (src/bench/device-timing.ts) on a fake event backend: the delay of
// copies queued before each timed run is sized from a measured copy time. The prefill profile never
// measured it, so the delay came out as Infinity copies and `bench latency --prefill N --profile`
// queued copies forever on CUDA (found on an H100, 2026-11-28: no output after 170 s).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Backend, DType, Tensor } from '../src/backends/backend.js';
import { DeviceDelay, profiledRuns } from '../src/bench/device-timing.js';
import { OpProfiler, type EventBackend } from '../src/bench/op-profiler.js';

/** A device whose clock advances 0.05 ms per copy and 0.01 ms per add; events read that clock. */
function fakeDevice() {
  const clock = { ms: 0, copies: 0 };
  const tensor = (shape: readonly number[], dtype: DType): Tensor => ({ shape, dtype }) as unknown as Tensor;
  const be = {
    device: 'cuda', activationDtype: 'bf16', stream: {},
    empty: tensor,
    free: () => {},
    copy: () => { clock.copies++; clock.ms += 0.05; },
    add: () => { clock.ms += 0.01; },
    synchronize: async () => {},
    createEvent: () => {
      const ev = {
        at: 0,
        record: () => { ev.at = clock.ms; },
        synchronize: () => {},
        elapsedMsSince: (start: { at: number }) => ev.at - start.at,
        destroy: () => {},
      };
      return ev;
    },
  };
  return { be: be as unknown as EventBackend, clock };
}

test('DeviceDelay.setMs before the copies were timed is an error, not an endless delay', async () => {
  const { be } = fakeDevice();
  const delay = new DeviceDelay(be);
  assert.equal(delay.measured, false);
  assert.throws(() => delay.setMs(1), (e: Error & { code?: string }) => e.code === 'PGN_ERR_INTERNAL' && /measureTBs/.test(e.message));
  await delay.measureTBs();
  assert.equal(delay.measured, true);
  delay.setMs(1);
});

test('profiledRuns times the delay itself when its caller did not (the prefill profile), and queues a bounded delay', async () => {
  const { be, clock } = fakeDevice();
  const prof = new OpProfiler(be as Backend);
  const delay = new DeviceDelay(be);
  const x = be.empty([1, 8], 'bf16');
  const { runs, spans } = await profiledRuns(be, prof, delay, () => prof.backend.add(x, x, x, 1));
  assert.equal(runs.length, 3);
  assert.equal(spans.length, 3);
  for (const ops of runs) assert.deepEqual(ops.map((o) => [o.op, o.calls]), [['elementwise', 1]]);
  for (const ops of runs) assert.ok(Math.abs(ops[0]!.ms - 0.01) < 1e-9, `the add's own device time, not the delay's: ${ops[0]!.ms}`);
  assert.ok(clock.copies < 100_000, `${clock.copies} copies queued`);
});
