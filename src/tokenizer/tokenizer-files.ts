/**
 * Reading a Hugging Face tokenizer folder: `tokenizer.json` (required), `tokenizer_config.json`,
 * `special_tokens_map.json` and `chat_template.jinja` (optional). Special-token fields are
 * normalised to plain strings here, so nothing downstream sees `{ content, __type }` objects.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { PeregrineError } from '../errors.js';

export const TOKENIZER_FILE = 'tokenizer.json';
export const TOKENIZER_CONFIG_FILE = 'tokenizer_config.json';
export const SPECIAL_TOKENS_MAP_FILE = 'special_tokens_map.json';
export const CHAT_TEMPLATE_FILE = 'chat_template.jinja';

const SPECIAL_TOKEN_KEYS = ['bos_token', 'eos_token', 'unk_token', 'pad_token', 'sep_token', 'cls_token', 'mask_token'] as const;
/** Top-level keys tokenizers.js insists on (it accepts null for each). */
const PIPELINE_KEYS = ['normalizer', 'pre_tokenizer', 'post_processor', 'decoder'] as const;

type Json = Record<string, unknown>;

export interface TokenizerFiles {
  /** tokenizer.json, with absent pipeline stages filled in as null */
  tokenizerJson: Json;
  /** tokenizer_config.json with special_tokens_map.json merged in; special-token fields are strings or null */
  config: Json;
  chatTemplate: string | null;
}

/** Read and normalise the tokenizer files of `dir`; see the module comment for which are optional. */
export async function readTokenizerFiles(dir: string): Promise<TokenizerFiles> {
  const root = path.resolve(dir);
  const tokenizerPath = path.join(root, TOKENIZER_FILE);
  const tokenizerJson = await readJsonObject(tokenizerPath);
  if (tokenizerJson === null) {
    throw new PeregrineError(
      'PGN_ERR_TOKENIZER_MISSING',
      `no ${TOKENIZER_FILE} in ${root}: this model can only take prompts as token ids`,
      { dir: root, file: tokenizerPath },
    );
  }
  const model = tokenizerJson.model;
  if (model === null || typeof model !== 'object' || Array.isArray(model)) {
    throw invalid(tokenizerPath, 'it has no "model" object');
  }
  for (const key of PIPELINE_KEYS) if (!(key in tokenizerJson)) tokenizerJson[key] = null;
  if (!Array.isArray(tokenizerJson.added_tokens)) tokenizerJson.added_tokens = [];

  const config = (await readJsonObject(path.join(root, TOKENIZER_CONFIG_FILE))) ?? {};
  const specialTokensMap = (await readJsonObject(path.join(root, SPECIAL_TOKENS_MAP_FILE))) ?? {};
  // As in transformers, a non-empty entry of special_tokens_map.json wins over tokenizer_config.json.
  for (const key of [...SPECIAL_TOKEN_KEYS, 'additional_special_tokens']) {
    const value = specialTokensMap[key];
    if (value !== undefined && value !== null) config[key] = value;
  }
  for (const key of SPECIAL_TOKEN_KEYS) config[key] = tokenContent(config[key]);
  const additional = config.additional_special_tokens;
  config.additional_special_tokens = Array.isArray(additional)
    ? additional.map(tokenContent).filter((t): t is string => t !== null)
    : [];

  const templateFile = await readText(path.join(root, CHAT_TEMPLATE_FILE));
  return { tokenizerJson, config, chatTemplate: templateFile ?? defaultChatTemplate(config.chat_template) };
}

/** A special-token field is a string, an AddedToken object `{ content, ... }`, or null. */
function tokenContent(value: unknown): string | null {
  if (typeof value === 'string') return value;
  if (value !== null && typeof value === 'object' && typeof (value as Json).content === 'string') {
    return (value as Json).content as string;
  }
  return null;
}

/** `chat_template` is a string, or a list of `{ name, template }` of which "default" is the default. */
function defaultChatTemplate(value: unknown): string | null {
  if (typeof value === 'string') return value;
  if (!Array.isArray(value)) return null;
  const named = value.filter(
    (t): t is { name: string; template: string } => typeof t?.name === 'string' && typeof t?.template === 'string',
  );
  return (named.find((t) => t.name === 'default') ?? named[0])?.template ?? null;
}

/** The parsed object, or null when the file does not exist. */
async function readJsonObject(file: string): Promise<Json | null> {
  const text = await readText(file);
  if (text === null) return null;
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw invalid(file, `it is not valid JSON (${(e as Error).message})`, e);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw invalid(file, 'it is not a JSON object');
  return parsed as Json;
}

/** The file's text, or null when it does not exist. */
async function readText(file: string): Promise<string | null> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw invalid(file, `it cannot be read (${(e as Error).message})`, e);
  }
}

export function invalid(file: string, why: string, cause?: unknown): PeregrineError {
  return new PeregrineError('PGN_ERR_TOKENIZER_INVALID', `bad tokenizer file ${file}: ${why}`, { file }, { cause });
}
