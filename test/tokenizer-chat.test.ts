import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isPeregrineError, type ErrorCode } from '../src/errors.js';
import { Tokenizer, applyChatTemplate, renderChatTemplate, type ChatMessage } from '../src/tokenizer/index.js';
import { strftime } from '../src/tokenizer/strftime.js';
import { BOS_CHATML_TEMPLATE, BYTE_LEVEL_IDS, CHATML_TEMPLATE, writeTinyByteLevelTokenizer } from './fixtures/tiny-tokenizer.js';

const CHAT: ChatMessage[] = [
  { role: 'system', content: 'Be brief.' },
  { role: 'user', content: 'hello' },
];

function throwsCode(fn: () => unknown, code: ErrorCode, message?: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(isPeregrineError(e, code), `expected ${code}, got ${String(e)}`);
    if (message) assert.match(e.message, message);
    return true;
  });
}

test('ChatML renders messages, with the generation prompt by default', () => {
  const body = '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n';
  assert.equal(renderChatTemplate(CHATML_TEMPLATE, CHAT, {}), body + '<|im_start|>assistant\n');
  assert.equal(renderChatTemplate(CHATML_TEMPLATE, CHAT, { addGenerationPrompt: false }), body);
});

test('content given as text parts is joined with newlines; other parts are refused', () => {
  const parts: ChatMessage[] = [{ role: 'user', content: [{ type: 'text', text: 'one' }, { type: 'text', text: 'two' }] }];
  assert.equal(renderChatTemplate('{{ messages[0].content }}', parts, {}), 'one\ntwo');
  const image = [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] as unknown as ChatMessage[];
  throwsCode(() => renderChatTemplate('{{ messages[0].content }}', image, {}), 'PGN_ERR_UNSUPPORTED_FEATURE', /messages\[0\]\.content\[0\].*image_url/);
});

test('bos_token, eos_token, extra variables and null content reach the template', () => {
  const tpl =
    '{{ bos_token }}{% for m in messages %}{% if m.content is none %}[none]{% else %}{{ m.content }}{% endif %}{{ eos_token }}{% endfor %}' +
    '{% if enable_thinking %}<think>{% endif %}{{ tools | length }}';
  const messages: ChatMessage[] = [{ role: 'user', content: 'q' }, { role: 'assistant', content: null }];
  const out = renderChatTemplate(tpl, messages, { bosToken: '<s>', eosToken: '</s>', extra: { enable_thinking: true, tools: [{}, {}] } });
  assert.equal(out, '<s>q</s>[none]</s><think>2');
  assert.equal(renderChatTemplate('[{{ bos_token }}]', [], {}), '[]', 'an absent bos_token renders empty, as an undefined variable');
});

test('raise_exception from the template is PGN_ERR_CHAT_TEMPLATE with its message', () => {
  const tpl =
    "{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}" +
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{{ m.content }}{% endfor %}";
  assert.equal(renderChatTemplate(tpl, [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }], {}), 'ab');
  assert.throws(
    () => renderChatTemplate(tpl, [{ role: 'assistant', content: 'b' }], {}),
    (e: unknown) =>
      isPeregrineError(e, 'PGN_ERR_CHAT_TEMPLATE') && e.details.raisedByTemplate === true && /roles must alternate/.test(e.message),
  );
});

test('strftime_now gives C-locale dates as Python does', () => {
  const date = new Date(2024, 6, 26, 9, 5, 3); // a Friday, day 208
  assert.equal(strftime(date, '%d %b %Y'), '26 Jul 2024');
  assert.equal(strftime(date, '%B %-d, %Y'), 'July 26, 2024');
  assert.equal(strftime(date, '%A %a %H:%M:%S %I%p %j %y-%m-%d %% %Q'), 'Friday Fri 09:05:03 09AM 208 24-07-26 % %Q');
  const rendered = renderChatTemplate('{{ strftime_now("%Y-%m-%d") }}', [], {});
  const now = new Date();
  assert.ok([strftime(now, '%Y-%m-%d'), strftime(new Date(now.getTime() - 60_000), '%Y-%m-%d')].includes(rendered), rendered);
  const weekday = renderChatTemplate('{{ strftime_now("%A") }}', [], {});
  assert.match(weekday, /^(Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day$/, 'the template sees our strftime_now, not a locale-dependent one');
});

test('syntax and runtime errors in a template are PGN_ERR_CHAT_TEMPLATE', () => {
  throwsCode(() => renderChatTemplate('{% for m in messages %}{{ m.content }}', CHAT, {}), 'PGN_ERR_CHAT_TEMPLATE', /does not parse/);
  throwsCode(() => renderChatTemplate('{{ 1 + }}', CHAT, {}), 'PGN_ERR_CHAT_TEMPLATE', /does not parse/);
  throwsCode(() => renderChatTemplate('{{ messages[0].content.no_such_method() }}', CHAT, {}), 'PGN_ERR_CHAT_TEMPLATE', /failed/);
});

test('compiled templates are cached per template text', () => {
  for (let i = 0; i < 20; i++) {
    assert.equal(renderChatTemplate(`${i % 3}:{{ messages | length }}`, CHAT, {}), `${i % 3}:2`);
  }
});

test('applyChatTemplate renders the tokenizer\'s template and encodes without adding bos again', async () => {
  const tok = await Tokenizer.load(writeTinyByteLevelTokenizer(undefined, { chatTemplate: BOS_CHATML_TEMPLATE }));
  assert.equal(tok.addBosToken, true);
  const { text, tokenIds } = applyChatTemplate(tok, [{ role: 'user', content: 'hello' }]);
  assert.equal(text, '<s><|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n');
  assert.deepEqual(tokenIds, tok.encode(text, { addSpecialTokens: false }));
  assert.equal(tokenIds.filter((id) => id === BYTE_LEVEL_IDS.bos).length, 1, 'exactly one bos');
  assert.deepEqual(tokenIds.slice(0, 3), [BYTE_LEVEL_IDS.bos, BYTE_LEVEL_IDS.imStart, tok.tokenToId('u')!]);
  assert.equal(tok.decode(tokenIds), text);
  assert.equal(tokenIds.at(-1), tok.tokenToId('Ċ'), 'ends with the newline after "assistant"');

  const noPrompt = applyChatTemplate(tok, [{ role: 'user', content: 'hello' }], { addGenerationPrompt: false });
  assert.ok(!noPrompt.text.endsWith('assistant\n'));
});

test('applyChatTemplate on a model without a chat template is PGN_ERR_CHAT_TEMPLATE', async () => {
  const tok = await Tokenizer.load(writeTinyByteLevelTokenizer(undefined, { chatTemplate: null }));
  throwsCode(() => applyChatTemplate(tok, CHAT), 'PGN_ERR_CHAT_TEMPLATE', /no chat template/);
});
