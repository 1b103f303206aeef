import { test } from 'node:test';
import assert from 'node:assert/strict';
import { IncrementalDetokenizer, Tokenizer } from '../src/tokenizer/index.js';
import { gpt2DirOrSkip, writeTinySentencePieceTokenizer } from './fixtures/tiny-tokenizer.js';

const REPLACEMENT_CHAR = '\uFFFD';
const MULTILINGUAL = 'Héllo wörld! 👋🏽 你好，世界。 naïve café — 🎉 family: 👨‍👩‍👧 Ελληνικά, ñandú, Ærøskøbing 😀';

function streamAll(detok: IncrementalDetokenizer, ids: number[]): string[] {
  return ids.map((id) => detok.push(id));
}

test('GPT-2: multi-byte text streamed token by token never emits half a character', async (t) => {
  const dir = gpt2DirOrSkip(t);
  if (!dir) return;
  const tok = await Tokenizer.load(dir);
  const ids = tok.encode(MULTILINGUAL);
  // the test is only meaningful if some tokens hold partial characters on their own
  assert.ok(ids.some((id) => tok.decode([id]).includes(REPLACEMENT_CHAR)), 'expected byte-split characters');

  for (const prompt of [[], tok.encode('Translate this:')]) {
    const detok = new IncrementalDetokenizer(tok, prompt);
    const deltas = streamAll(detok, ids);
    for (const d of deltas) assert.ok(!d.includes(REPLACEMENT_CHAR), `delta ${JSON.stringify(d)} holds U+FFFD`);
    assert.ok(deltas.includes(''), 'some tokens were held back');
    assert.equal(deltas.join(''), tok.decode(ids));
    assert.equal(detok.text, MULTILINGUAL);
  }
});

test('GPT-2: a stream cut in the middle of an emoji holds it back until flush()', async (t) => {
  const dir = gpt2DirOrSkip(t);
  if (!dir) return;
  const tok = await Tokenizer.load(dir);
  const ids = tok.encode('ok 🎉');
  const partial = ids.slice(0, -1);
  assert.ok(tok.decode(partial).endsWith(REPLACEMENT_CHAR), 'the emoji spans several tokens');
  const detok = new IncrementalDetokenizer(tok, []);
  streamAll(detok, partial);
  assert.equal(detok.text, 'ok');
  assert.equal(detok.flush(), tok.decode(partial).slice('ok'.length));
  assert.equal(detok.text, tok.decode(partial));
  assert.equal(detok.flush(), '', 'nothing left to flush');
});

test('GPT-2: special tokens are skipped by default and kept on request', async (t) => {
  const dir = gpt2DirOrSkip(t);
  if (!dir) return;
  const tok = await Tokenizer.load(dir);
  const ids = [...tok.encode('The end.'), tok.eosTokenId!, ...tok.encode(' More')];
  const skipping = new IncrementalDetokenizer(tok, tok.encode('Story:'));
  streamAll(skipping, ids);
  assert.equal(skipping.text, 'The end. More');
  assert.equal(skipping.text, tok.decode(ids, { skipSpecialTokens: true }));
  const keeping = new IncrementalDetokenizer(tok, [], { skipSpecialTokens: false });
  streamAll(keeping, ids);
  assert.equal(keeping.text, 'The end.<|endoftext|> More');
});

test('sentencepiece: leading spaces survive and byte-fallback characters come out whole', async () => {
  const tok = await Tokenizer.load(writeTinySentencePieceTokenizer());
  const full = tok.encode('Hello world é😀 Hello!');
  const promptLen = 2; // <s> ▁Hello
  const prompt = full.slice(0, promptLen);
  const output = full.slice(promptLen);
  assert.equal(tok.decode([output[0]]), 'world', 'decoding a lone token loses its space');

  const detok = new IncrementalDetokenizer(tok, prompt);
  const deltas = streamAll(detok, output);
  for (const d of deltas) assert.ok(!d.includes(REPLACEMENT_CHAR), `delta ${JSON.stringify(d)} holds U+FFFD`);
  assert.equal(deltas[0], ' world', 'the first generated token keeps the space that separates it from the prompt');
  const promptText = tok.decode(prompt, { skipSpecialTokens: true });
  assert.equal(detok.text, tok.decode(full, { skipSpecialTokens: true }).slice(promptText.length));
  assert.equal(detok.text, ' world é😀 Hello!');

  // without a prompt the text is exactly decode(output)
  const bare = new IncrementalDetokenizer(tok, []);
  streamAll(bare, output);
  assert.equal(bare.text, tok.decode(output, { skipSpecialTokens: true }));
});
