/**
 * Chat templates: the model's Jinja template rendered with @huggingface/jinja, in the context
 * transformers' apply_chat_template gives it (messages, add_generation_prompt, bos_token,
 * eos_token, raise_exception, strftime_now, extra kwargs such as tools or enable_thinking).
 */
import { Environment, Interpreter, Template } from '@huggingface/jinja';
import { PeregrineError } from '../errors.js';
import { strftimeNow } from './strftime.js';
import type { Tokenizer } from './tokenizer.js';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool' | string;
  /** a list of text parts is joined with '\n' (as vLLM does for string-content templates) */
  content: string | Array<{ type: 'text'; text: string }> | null;
  name?: string;
}

export interface RenderOptions {
  /** end the prompt where the assistant's reply starts (default true: we render to generate) */
  addGenerationPrompt?: boolean;
  bosToken?: string;
  eosToken?: string;
  /** more template variables (tools, documents, enable_thinking, ...) */
  extra?: Record<string, unknown>;
}

export const DEFAULT_ADD_GENERATION_PROMPT = true;
const MAX_CACHED_TEMPLATES = 8;
const compiledTemplates = new Map<string, Template>();

/** What the template's raise_exception throws, told apart from the renderer's own errors. */
class TemplateRaised extends Error {}

/**
 * Render `template` over `messages`.
 * @throws PeregrineError PGN_ERR_CHAT_TEMPLATE with the template's own message when it does not
 *   parse, fails, or calls raise_exception; PGN_ERR_UNSUPPORTED_FEATURE for a non-text content part.
 * @example renderChatTemplate(tpl, [{ role: 'user', content: 'Hi' }], { bosToken: '<s>' })
 */
export function renderChatTemplate(template: string, messages: ChatMessage[], opts: RenderOptions = {}): string {
  const compiled = compile(template);
  const context: Record<string, unknown> = {
    // The globals Template.render would set, with HF's raise_exception and a C-locale strftime_now.
    true: true, false: false, none: null, True: true, False: false, None: null,
    range,
    raise_exception: (message: unknown) => { throw new TemplateRaised(String(message)); },
    strftime_now: strftimeNow,
    ...(opts.bosToken !== undefined && { bos_token: opts.bosToken }),
    ...(opts.eosToken !== undefined && { eos_token: opts.eosToken }),
    ...opts.extra,
    messages: messages.map(toTemplateMessage),
    add_generation_prompt: opts.addGenerationPrompt ?? DEFAULT_ADD_GENERATION_PROMPT,
  };
  try {
    const env = new Environment();
    for (const [name, value] of Object.entries(context)) env.set(name, value);
    return (new Interpreter(env).run(compiled.parsed) as { value: string }).value;
  } catch (e) {
    const why = e instanceof TemplateRaised ? 'the chat template rejected the messages' : 'the chat template failed';
    throw new PeregrineError('PGN_ERR_CHAT_TEMPLATE', `${why}: ${(e as Error).message}`, { raisedByTemplate: e instanceof TemplateRaised }, { cause: e });
  }
}

/**
 * Render the tokenizer's chat template and tokenize the result. The text already holds bos where
 * the template writes it, so it is encoded without adding special tokens (as transformers does).
 * @throws PeregrineError PGN_ERR_CHAT_TEMPLATE when the model has no chat template, and as renderChatTemplate.
 */
export function applyChatTemplate(
  tok: Tokenizer,
  messages: ChatMessage[],
  opts: { addGenerationPrompt?: boolean; extra?: Record<string, unknown> } = {},
): { text: string; tokenIds: number[] } {
  if (tok.chatTemplate === null) {
    throw new PeregrineError(
      'PGN_ERR_CHAT_TEMPLATE',
      `this model has no chat template (none in ${tok.dir}): send a plain prompt instead of chat messages`,
      { dir: tok.dir },
    );
  }
  const text = renderChatTemplate(tok.chatTemplate, messages, {
    addGenerationPrompt: opts.addGenerationPrompt,
    bosToken: tok.bosToken ?? undefined,
    eosToken: tok.eosToken ?? undefined,
    extra: opts.extra,
  });
  return { text, tokenIds: tok.encode(text, { addSpecialTokens: false }) };
}

function compile(template: string): Template {
  let compiled = compiledTemplates.get(template);
  if (compiled) return compiled;
  try {
    compiled = new Template(template);
  } catch (e) {
    throw new PeregrineError('PGN_ERR_CHAT_TEMPLATE', `the chat template does not parse: ${(e as Error).message}`, {}, { cause: e });
  }
  if (compiledTemplates.size >= MAX_CACHED_TEMPLATES) compiledTemplates.delete(compiledTemplates.keys().next().value!);
  compiledTemplates.set(template, compiled);
  return compiled;
}

function toTemplateMessage(message: ChatMessage, index: number): Record<string, unknown> {
  if (!Array.isArray(message.content)) return { ...message };
  const texts = message.content.map((part, j) => {
    if (part?.type !== 'text' || typeof part.text !== 'string') {
      throw new PeregrineError(
        'PGN_ERR_UNSUPPORTED_FEATURE',
        `messages[${index}].content[${j}] has type ${JSON.stringify(part?.type)}: only text parts are supported`,
        { messageIndex: index, partIndex: j },
      );
    }
    return part.text;
  });
  return { ...message, content: texts.join('\n') };
}

/** Python's range(). */
function range(start: number, stop?: number, step = 1): number[] {
  if (stop === undefined) [start, stop] = [0, start];
  if (step === 0) throw new Error('range() arg 3 must not be zero');
  const out: number[] = [];
  for (let i = start; step > 0 ? i < stop : i > stop; i += step) out.push(i);
  return out;
}
