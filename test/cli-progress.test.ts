// The build progress bar: redrawn in place on a terminal, one line per tenth elsewhere.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatBytes, ProgressBar } from '../src/cli/progress.js';

function fakeStream(isTTY: boolean): { stream: NodeJS.WriteStream; text: () => string } {
  let text = '';
  const stream = { isTTY, write: (s: string) => ((text += s), true) } as unknown as NodeJS.WriteStream;
  return { stream, text: () => text };
}

test('progress bar without a terminal: one line per tenth, ending at 100%', () => {
  const { stream, text } = fakeStream(false);
  const bar = new ProgressBar(stream, 'quantizing');
  for (let i = 0; i <= 1000; i++) bar.update(i, 1000, `${i}/1000`);
  bar.done();
  const lines = text().trimEnd().split('\n');
  assert.equal(lines.length, 11);
  assert.match(lines[0]!, /^quantizing \[\.{30}\]   0% [\d.]+s 0\/1000$/);
  assert.match(lines[10]!, /^quantizing \[#{30}\] 100% [\d.]+s 1000\/1000$/);
  assert.ok(!text().includes('\r'));
});

test('progress bar on a terminal: carriage-return redraws, throttled, final state always drawn', () => {
  const { stream, text } = fakeStream(true);
  const bar = new ProgressBar(stream, 'q');
  for (let i = 0; i <= 1000; i++) bar.update(i, 1000);
  bar.done();
  const draws = text().split('\r').filter(Boolean);
  assert.ok(draws.length >= 2 && draws.length < 100, `${draws.length} redraws`);
  assert.match(draws.at(-1)!, /^q \[#{30}\] 100% /);
  assert.ok(text().endsWith('\n'));
});

test('formatBytes', () => {
  assert.deepEqual([0, 1023, 1024, 1536 * 1024, 16 * 2 ** 30].map(formatBytes), ['0 B', '1023 B', '1.0 KiB', '1.5 MiB', '16.0 GiB']);
});
