import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isPeregrineError, type ErrorCode } from '../src/errors.js';
import { Tokenizer } from '../src/tokenizer/index.js';
import {
  BYTE_LEVEL_IDS, SENTENCEPIECE_IDS, gpt2DirOrSkip, makeTempDir, writeJson,
  writeTinyByteLevelTokenizer, writeTinySentencePieceTokenizer,
} from './fixtures/tiny-tokenizer.js';

async function loadError(dir: string, code: ErrorCode): Promise<Error> {
  let caught: unknown;
  await Tokenizer.load(dir).catch((e: unknown) => (caught = e));
  assert.ok(isPeregrineError(caught, code), `expected ${code}, got ${String(caught)}`);
  return caught as Error;
}

test('GPT-2: ids, special tokens and round trips match the reference tokenizer', async (t) => {
  const dir = gpt2DirOrSkip(t);
  if (!dir) return;
  assert.equal(Tokenizer.exists(dir), true);
  const tok = await Tokenizer.load(dir);
  assert.equal(tok.vocabSize, 50257);
  assert.equal(tok.bosTokenId, 50256);
  assert.equal(tok.eosTokenId, 50256);
  assert.equal(tok.padTokenId, null);
  assert.equal(tok.addBosToken, false);
  assert.equal(tok.chatTemplate, null);
  // transformers: GPT2TokenizerFast("Hello world") -> [15496, 995]
  assert.deepEqual(tok.encode('Hello world'), [15496, 995]);
  assert.deepEqual(tok.encode('Hello<|endoftext|>'), [15496, 50256]);
  assert.equal(tok.tokenToId('Ġworld'), 995);
  assert.equal(tok.idToToken(15496), 'Hello');
  assert.equal(tok.idToToken(tok.vocabSize), null);
  assert.equal(tok.tokenToId('no such token'), null);
  assert.equal(tok.isSpecial(50256), true);
  assert.equal(tok.isSpecial(15496), false);

  const text = 'Héllo wörld 👋🏽 你好，世界! naïve café 🎉';
  assert.equal(tok.decode(tok.encode(text)), text);
  assert.equal(tok.decode(Int32Array.from(tok.encode(text))), text, 'typed arrays decode too');
  const withEos = [...tok.encode('Hi there'), 50256];
  assert.equal(tok.decode(withEos), 'Hi there<|endoftext|>');
  assert.equal(tok.decode(withEos, { skipSpecialTokens: true }), 'Hi there');
  // no clean_up_tokenization_spaces: streamed text must equal decoded text (transformers would give "Hello.")
  assert.equal(tok.decode(tok.encode('Hello . do n\'t')), 'Hello . do n\'t');
  assert.equal(tok.decode([]), '');
  assert.equal(tok.decode([15496, 60000, 995]), 'Hello world', 'ids past the vocab (padded embeddings) decode to nothing');
});

test('tiny byte-level tokenizer: bos added by the post-processor, by add_bos_token, or not at all', async () => {
  const hello = BYTE_LEVEL_IDS.hello;
  for (const [bosBy, addsBos] of [['post-processor', true], ['config', true], ['none', false]] as const) {
    const tok = await Tokenizer.load(writeTinyByteLevelTokenizer(undefined, { bosBy }));
    assert.equal(tok.addBosToken, addsBos, bosBy);
    assert.deepEqual(tok.encode('hello'), addsBos ? [BYTE_LEVEL_IDS.bos, hello] : [hello], bosBy);
    assert.deepEqual(tok.encode('hello', { addSpecialTokens: false }), [hello], bosBy);
    assert.deepEqual(tok.encode('<s>hello', { addSpecialTokens: false }), [BYTE_LEVEL_IDS.bos, hello], bosBy);
  }
});

test('tiny byte-level tokenizer: bos/eos/pad, special and non-special added tokens', async () => {
  const tok = await Tokenizer.load(writeTinyByteLevelTokenizer());
  assert.equal(tok.vocabSize, BYTE_LEVEL_IDS.tool + 1);
  assert.equal(tok.bosTokenId, BYTE_LEVEL_IDS.bos);
  assert.equal(tok.eosTokenId, BYTE_LEVEL_IDS.eos, 'eos_token given as an AddedToken object');
  assert.equal(tok.padTokenId, BYTE_LEVEL_IDS.pad);
  assert.equal(tok.bosToken, '<s>');
  assert.equal(tok.eosToken, '</s>');
  for (const id of [BYTE_LEVEL_IDS.bos, BYTE_LEVEL_IDS.eos, BYTE_LEVEL_IDS.pad, BYTE_LEVEL_IDS.imStart]) assert.equal(tok.isSpecial(id), true, `${id}`);
  assert.equal(tok.isSpecial(BYTE_LEVEL_IDS.tool), false);
  assert.equal(tok.isSpecial(BYTE_LEVEL_IDS.hello), false);

  const ids = tok.encode('hello<tool> world</s>');
  assert.deepEqual(ids, [BYTE_LEVEL_IDS.bos, BYTE_LEVEL_IDS.hello, BYTE_LEVEL_IDS.tool, BYTE_LEVEL_IDS.world, BYTE_LEVEL_IDS.eos]);
  assert.equal(tok.decode(ids), '<s>hello<tool> world</s>');
  assert.equal(tok.decode(ids, { skipSpecialTokens: true }), 'hello<tool> world');
  assert.equal(tok.decode(tok.encode('é😀 ok', { addSpecialTokens: false })), 'é😀 ok');
});

test('add_eos_token appends eos; special_tokens_map.json fills in what tokenizer_config lacks', async () => {
  const dir = writeTinyByteLevelTokenizer(undefined, { bosBy: 'none', config: { add_eos_token: true, eos_token: null, pad_token: null } });
  writeJson(dir, 'special_tokens_map.json', { eos_token: { content: '</s>' }, pad_token: '<|im_end|>' });
  const tok = await Tokenizer.load(dir);
  assert.equal(tok.eosTokenId, BYTE_LEVEL_IDS.eos);
  assert.equal(tok.padTokenId, BYTE_LEVEL_IDS.imEnd);
  assert.deepEqual(tok.encode('hello'), [BYTE_LEVEL_IDS.hello, BYTE_LEVEL_IDS.eos]);
  assert.deepEqual(tok.encode('hello', { addSpecialTokens: false }), [BYTE_LEVEL_IDS.hello]);
});

test('chat template: chat_template.jinja wins; the list form picks "default"', async () => {
  const dir = writeTinyByteLevelTokenizer(undefined, {
    chatTemplate: [{ name: 'tool_use', template: 'TOOLS' }, { name: 'default', template: 'DEFAULT' }] as unknown as string,
  });
  assert.equal((await Tokenizer.load(dir)).chatTemplate, 'DEFAULT');
  fs.writeFileSync(path.join(dir, 'chat_template.jinja'), 'FROM FILE');
  assert.equal((await Tokenizer.load(dir)).chatTemplate, 'FROM FILE');
  assert.equal((await Tokenizer.load(writeTinyByteLevelTokenizer(undefined, { chatTemplate: null }))).chatTemplate, null);
});

test('tiny sentencepiece tokenizer: leading space, byte fallback, unk', async () => {
  const tok = await Tokenizer.load(writeTinySentencePieceTokenizer());
  assert.equal(tok.addBosToken, true);
  const ids = tok.encode('Hello world é😀');
  assert.equal(ids[0], SENTENCEPIECE_IDS.bos);
  assert.equal(tok.idToToken(ids[1]), '▁Hello');
  assert.equal(tok.decode(ids, { skipSpecialTokens: true }), 'Hello world é😀');
  assert.equal(tok.decode(ids), '<s> Hello world é😀');
  assert.equal(tok.padTokenId, null);
});

test('a piece with no token (unk_token absent from the vocab) is a typed error naming it', async () => {
  const dir = makeTempDir();
  writeJson(dir, 'tokenizer.json', {
    pre_tokenizer: { type: 'WhitespaceSplit' },
    model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100, vocab: { hello: 0, world: 1 } },
  });
  const tok = await Tokenizer.load(dir);
  assert.deepEqual(tok.encode('hello world'), [0, 1]);
  assert.throws(() => tok.encode('hello zzz'), (e: unknown) => isPeregrineError(e, 'PGN_ERR_INVALID_ARGUMENT') && /"\[UNK\]"/.test(e.message));
});

test('errors: missing folder or tokenizer.json, unreadable or invalid files', async () => {
  const missing = path.join(makeTempDir(), 'nope');
  assert.equal(Tokenizer.exists(missing), false);
  const e1 = await loadError(missing, 'PGN_ERR_TOKENIZER_MISSING');
  assert.match(e1.message, /tokenizer\.json/);

  const empty = makeTempDir();
  assert.equal(Tokenizer.exists(empty), false);
  await loadError(empty, 'PGN_ERR_TOKENIZER_MISSING');

  const badJson = makeTempDir();
  fs.writeFileSync(path.join(badJson, 'tokenizer.json'), '{"model": ');
  const e2 = await loadError(badJson, 'PGN_ERR_TOKENIZER_INVALID');
  assert.ok(e2.message.includes(path.join(badJson, 'tokenizer.json')), e2.message);

  const badConfig = writeTinyByteLevelTokenizer();
  fs.writeFileSync(path.join(badConfig, 'tokenizer_config.json'), '{ not json');
  const e3 = await loadError(badConfig, 'PGN_ERR_TOKENIZER_INVALID');
  assert.ok(e3.message.includes(path.join(badConfig, 'tokenizer_config.json')), e3.message);

  const noModel = makeTempDir();
  writeJson(noModel, 'tokenizer.json', { added_tokens: [] });
  assert.match((await loadError(noModel, 'PGN_ERR_TOKENIZER_INVALID')).message, /"model"/);

  const unknownModel = makeTempDir();
  writeJson(unknownModel, 'tokenizer.json', { model: { type: 'NoSuchModel' } });
  assert.match((await loadError(unknownModel, 'PGN_ERR_TOKENIZER_INVALID')).message, /NoSuchModel/);

  const dirAsFile = writeTinyByteLevelTokenizer();
  fs.rmSync(path.join(dirAsFile, 'tokenizer_config.json'));
  fs.mkdirSync(path.join(dirAsFile, 'tokenizer_config.json'));
  const e4 = await loadError(dirAsFile, 'PGN_ERR_TOKENIZER_INVALID');
  assert.ok(e4.message.includes('tokenizer_config.json'), e4.message);
});
