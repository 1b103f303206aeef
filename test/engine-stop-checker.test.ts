import assert from 'node:assert/strict';
import { test } from 'node:test';
import { StopChecker, type StopDecision } from '../src/engine/stop-checker.js';
import { makeSamplingParams, type SamplingParamsInit } from '../src/sampling/params.js';

const EOS = 2;

function checker(init: SamplingParamsInit, maxModelLen = 1000, promptLen = 10): StopChecker {
  return new StopChecker(makeSamplingParams({ maxTokens: 100, ...init }), [EOS], maxModelLen, promptLen);
}

/** Feed text deltas as tokens (ids 100, 101, ...); returns every decision and the text emitted overall. */
function feed(c: StopChecker, deltas: string[]): { decisions: StopDecision[]; text: string } {
  const decisions: StopDecision[] = [];
  let text = '';
  for (let i = 0; i < deltas.length; i++) {
    const d = c.onToken(100 + i, deltas[i]!, i + 1);
    decisions.push(d);
    text += d.emitText;
    if (d.finished) break;
  }
  return { decisions, text };
}

test('plain text streams through unchanged', () => {
  const { decisions, text } = feed(checker({}), ['Hello', ' world', '!']);
  assert.deepEqual(decisions.map((d) => d.emitText), ['Hello', ' world', '!']);
  assert.equal(text, 'Hello world!');
  assert.ok(decisions.every((d) => !d.finished && d.reason === null));
});

test('eos stops with the eos id as stop reason and drops its text; ignore_eos keeps going', () => {
  const c = checker({});
  c.onToken(5, 'hi', 1);
  assert.deepEqual(c.onToken(EOS, '</s>', 2), { finished: true, reason: 'stop', stopReason: EOS, emitText: '' });
  const d = checker({ ignoreEos: true }).onToken(EOS, '</s>', 1);
  assert.equal(d.finished, false);
  assert.equal(d.emitText, '</s>');
});

test('stop token ids stop (even with ignore_eos); include_stop_str_in_output keeps their text', () => {
  assert.deepEqual(checker({ stopTokenIds: [7], ignoreEos: true }).onToken(7, '<|end|>', 1), {
    finished: true,
    reason: 'stop',
    stopReason: 7,
    emitText: '',
  });
  assert.equal(checker({ stopTokenIds: [7], includeStopStrInOutput: true }).onToken(7, '<|end|>', 1).emitText, '<|end|>');
});

test('max_tokens and the context length finish with reason length, emitting the last text', () => {
  const d = feed(checker({ maxTokens: 2 }), ['a', 'b', 'c']);
  assert.equal(d.decisions.length, 2);
  assert.deepEqual(d.decisions[1], { finished: true, reason: 'length', stopReason: null, emitText: 'b' });
  const ctx = feed(checker({}, 13, 10), ['a', 'b', 'c', 'd']);
  assert.equal(ctx.decisions.length, 3); // 10 + 3 >= 13
  assert.equal(ctx.decisions[2]!.reason, 'length');
  assert.equal(ctx.text, 'abc');
});

test('min_tokens: eos, stop ids and stop strings do not stop before min_tokens outputs', () => {
  const c = checker({ minTokens: 3, stop: ['x'], stopTokenIds: [9] });
  assert.equal(c.onToken(EOS, '', 1).finished, false);
  assert.equal(c.onToken(9, '', 2).finished, false);
  const d = c.onToken(9, '', 3);
  assert.equal(d.finished, true);
  assert.equal(d.stopReason, 9);
  const s = checker({ minTokens: 2, stop: ['x'] });
  assert.equal(s.onToken(5, 'x', 1).finished, false);
  assert.equal(s.onToken(5, 'ax', 2).stopReason, 'x');
});

test('a stop string split over 3 tokens is found, cut, and never emitted', () => {
  const { decisions, text } = feed(checker({ stop: ['STOP'] }), ['abc ST', 'O', 'P and more', 'never']);
  assert.deepEqual(decisions.map((d) => d.emitText), ['abc ', '', '']);
  assert.deepEqual(decisions[2], { finished: true, reason: 'stop', stopReason: 'STOP', emitText: '' });
  assert.equal(text, 'abc ');
});

test('text before a stop string in the same token is emitted', () => {
  const { text, decisions } = feed(checker({ stop: ['\n\n'] }), ['one', ' two\n', '\nthree']);
  assert.equal(text, 'one two');
  assert.equal(decisions[2]!.stopReason, '\n\n');
});

test('a partial match is held back, then released when the match fails', () => {
  const c = checker({ stop: ['STOP'] });
  assert.equal(c.onToken(100, 'ab ST', 1).emitText, 'ab ');
  assert.equal(c.onToken(101, 'O', 2).emitText, '');
  const d = c.onToken(102, 'X!', 3);
  assert.deepEqual(d, { finished: false, reason: null, stopReason: null, emitText: 'STOX!' });
  // overlapping prefixes: "aaab" against "aab" releases only the first "a"
  const o = feed(checker({ stop: ['aab'] }), ['a', 'a', 'a', 'b']);
  assert.deepEqual(o.decisions.map((x) => x.emitText), ['', '', 'a', '']);
  assert.equal(o.decisions[3]!.stopReason, 'aab');
});

test('multiple stop strings: the first completed wins', () => {
  const c = feed(checker({ stop: ['END', '\n\n', 'STOP'] }), ['x\n', 'y ST', 'OP', '\n\n']);
  assert.equal(c.text, 'x\ny ');
  assert.equal(c.decisions.at(-1)!.stopReason, 'STOP');
  // both complete in one delta: "bc" ends before "abcd"
  const d = feed(checker({ stop: ['abcd', 'bc'] }), ['xabcd']);
  assert.deepEqual(d.decisions[0], { finished: true, reason: 'stop', stopReason: 'bc', emitText: 'xa' });
  // the held-back tail serves every stop string
  const e = feed(checker({ stop: ['<end>', 'ND!'] }), ['a <e', 'ND!']);
  assert.equal(e.text, 'a <e');
  assert.equal(e.decisions[1]!.stopReason, 'ND!');
});

test('include_stop_str_in_output keeps the stop string and cuts what follows', () => {
  const c = feed(checker({ stop: ['STOP'], includeStopStrInOutput: true }), ['foo ST', 'O', 'P bar']);
  assert.deepEqual(c.decisions.map((d) => d.emitText), ['foo ST', 'O', 'P']);
  assert.equal(c.text, 'foo STOP');
  assert.equal(c.decisions[2]!.stopReason, 'STOP');
});

test('flush returns the held-back text once; nothing after finishing', () => {
  const c = checker({ stop: ['STOP'] });
  assert.equal(c.onToken(100, 'hi S', 1).emitText, 'hi ');
  assert.equal(c.flush(), 'S');
  assert.equal(c.flush(), '');
  const l = feed(checker({ stop: ['STOP'], maxTokens: 2 }), ['a', ' ST']);
  assert.equal(l.text, 'a ST'); // finishing for length releases the held "ST"
  const f = checker({ stop: ['x'] });
  f.onToken(100, 'x', 1);
  assert.deepEqual(f.onToken(101, 'more', 2), { finished: true, reason: 'stop', stopReason: 'x', emitText: '' });
  assert.equal(f.flush(), '');
});
