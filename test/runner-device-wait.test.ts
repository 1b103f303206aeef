// The bounded wait for queued device work (tensor-parallel steps): it returns once the work is
// done, keeps the event loop turning meanwhile, and fails with PGN_ERR_ENGINE_DEAD at the deadline.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pollUntilDone, stepTimeoutMs } from '../src/runner/device-wait.js';

test('returns once done, with the event loop free meanwhile', async () => {
  let polls = 0, ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const t0 = performance.now();
  await pollUntilDone(() => ++polls > 1 && performance.now() - t0 > 30, 5_000, 'a step');
  clearInterval(timer);
  assert.ok(ticks > 3, `timers ran ${ticks} times while polling`);
});

test('fails with PGN_ERR_ENGINE_DEAD naming the wait and the limit', async () => {
  const t0 = performance.now();
  await assert.rejects(pollUntilDone(() => false, 50, 'a tensor-parallel step'), (e: any) =>
    e.code === 'PGN_ERR_ENGINE_DEAD' && /a tensor-parallel step did not finish within 0 s: a rank stopped answering \(PEREGRINE_STEP_TIMEOUT_S/.test(e.message));
  assert.ok(performance.now() - t0 < 2_000);
});

test('PEREGRINE_STEP_TIMEOUT_S sets the limit; absent or invalid: 10 minutes', () => {
  assert.equal(stepTimeoutMs({ PEREGRINE_STEP_TIMEOUT_S: '30' }), 30_000);
  assert.equal(stepTimeoutMs({}), 600_000);
  assert.equal(stepTimeoutMs({ PEREGRINE_STEP_TIMEOUT_S: 'soon' }), 600_000);
});
