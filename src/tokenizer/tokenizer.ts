/**
 * The model's tokenizer: @huggingface/tokenizers over a Hugging Face tokenizer folder, plus what
 * transformers adds on top of tokenizer.json (bos/eos from tokenizer_config.json, add_bos_token,
 * the chat template). A checkpoint without a tokenizer still runs: callers check
 * `Tokenizer.exists(dir)` and take token-id prompts instead.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Tokenizer as HfTokenizerImpl } from '@huggingface/tokenizers';
import { PeregrineError } from '../errors.js';
import { TOKENIZER_FILE, invalid, readTokenizerFiles, type TokenizerFiles } from './tokenizer-files.js';

/** What we use of @huggingface/tokenizers' Tokenizer (its .d.ts files do not resolve under NodeNext). */
interface HfTokenizer {
  encode(text: string, opts: { add_special_tokens: boolean }): { ids: Array<number | undefined>; tokens: string[] };
  decode(ids: number[], opts: { skip_special_tokens: boolean; clean_up_tokenization_spaces: boolean }): string;
  token_to_id(token: string): number | undefined;
  id_to_token(id: number): string | undefined;
  get_added_tokens_decoder(): Map<number, { special: boolean }>;
  model: { vocab: string[] } | null;
}

export class Tokenizer {
  readonly dir: string;
  /** One past the largest token id the tokenizer knows (added tokens included). */
  readonly vocabSize: number;
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly padToken: string | null;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  readonly padTokenId: number | null;
  /** true when tokenizer_config says add_bos_token, or the post-processor adds bos itself */
  readonly addBosToken: boolean;
  readonly chatTemplate: string | null;

  private readonly hf: HfTokenizer;
  /** added tokens marked special, the named special tokens and additional_special_tokens */
  private readonly specialIds: ReadonlySet<number>;
  /** tokenizer_config asks for bos / eos that the post-processor does not add by itself */
  private readonly prependBos: boolean;
  private readonly appendEos: boolean;

  private constructor(dir: string, hf: HfTokenizer, files: TokenizerFiles, specialTokensOfEmpty: number[]) {
    this.dir = dir;
    this.hf = hf;
    this.chatTemplate = files.chatTemplate;
    const config = files.config;
    const tokenOf = (key: string): string | null => (typeof config[key] === 'string' ? (config[key] as string) : null);
    this.bosToken = tokenOf('bos_token');
    this.eosToken = tokenOf('eos_token');
    this.padToken = tokenOf('pad_token');
    this.bosTokenId = this.idOrNull(this.bosToken);
    this.eosTokenId = this.idOrNull(this.eosToken);
    this.padTokenId = this.idOrNull(this.padToken);

    const special = new Set<number>();
    for (const [id, token] of hf.get_added_tokens_decoder()) if (token.special) special.add(id);
    const named = [this.bosToken, this.eosToken, this.padToken, tokenOf('unk_token'), ...(config.additional_special_tokens as string[])];
    for (const token of named) {
      const id = this.idOrNull(token);
      if (id !== null) special.add(id);
    }
    this.specialIds = special;

    let maxId = (hf.model?.vocab.length ?? 0) - 1;
    for (const id of hf.get_added_tokens_decoder().keys()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;

    const postProcessorAddsBos = this.bosTokenId !== null && specialTokensOfEmpty[0] === this.bosTokenId;
    const postProcessorAddsEos = this.eosTokenId !== null && specialTokensOfEmpty.at(-1) === this.eosTokenId;
    this.prependBos = config.add_bos_token === true && this.bosTokenId !== null && !postProcessorAddsBos;
    this.appendEos = config.add_eos_token === true && this.eosTokenId !== null && !postProcessorAddsEos;
    this.addBosToken = postProcessorAddsBos || this.prependBos;
  }

  /**
   * Load the tokenizer of a model folder.
   * @throws PeregrineError PGN_ERR_TOKENIZER_MISSING when `dir` has no tokenizer.json;
   *   PGN_ERR_TOKENIZER_INVALID (details.file names the file) when a file cannot be read or parsed.
   */
  static async load(dir: string): Promise<Tokenizer> {
    const root = path.resolve(dir);
    const files = await readTokenizerFiles(root);
    let hf: HfTokenizer;
    let specialTokensOfEmpty: number[];
    try {
      hf = new HfTokenizerImpl(files.tokenizerJson, files.config) as HfTokenizer;
      specialTokensOfEmpty = hf.encode('', { add_special_tokens: true }).ids as number[];
    } catch (e) {
      throw invalid(path.join(root, TOKENIZER_FILE), `@huggingface/tokenizers cannot use it (${(e as Error).message})`, e);
    }
    return new Tokenizer(root, hf, files, specialTokensOfEmpty);
  }

  /** Whether `dir` holds a tokenizer.json. */
  static exists(dir: string): boolean {
    return fs.existsSync(path.join(dir, TOKENIZER_FILE));
  }

  /**
   * Text -> token ids. With `addSpecialTokens` (default true) the post-processor's tokens are
   * added, and bos/eos where tokenizer_config asks for them and the post-processor does not.
   * @throws PeregrineError PGN_ERR_INVALID_ARGUMENT when a piece maps to no id (no usable unk token).
   */
  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    const addSpecialTokens = opts.addSpecialTokens ?? true;
    const { ids, tokens } = this.hf.encode(text, { add_special_tokens: addSpecialTokens });
    const unknown = ids.findIndex((id) => id === undefined);
    if (unknown >= 0) {
      throw new PeregrineError(
        'PGN_ERR_INVALID_ARGUMENT',
        `the tokenizer in ${this.dir} cannot encode this text: its piece ${unknown}, ${JSON.stringify(tokens[unknown])}, is not in the vocabulary (nor is an unk token)`,
        { piece: tokens[unknown], position: unknown },
      );
    }
    const known = ids as number[];
    if (addSpecialTokens && this.prependBos) known.unshift(this.bosTokenId!);
    if (addSpecialTokens && this.appendEos) known.push(this.eosTokenId!);
    return known;
  }

  /**
   * Token ids -> text, without transformers' clean_up_tokenization_spaces (as vLLM streams it).
   * Ids the tokenizer does not know (padded embedding rows) decode to nothing, as in HF tokenizers.
   * @param opts.skipSpecialTokens drop special tokens (default false)
   */
  decode(ids: ArrayLike<number>, opts: { skipSpecialTokens?: boolean } = {}): string {
    const skip = opts.skipSpecialTokens ?? false;
    const kept: number[] = [];
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (this.idToToken(id) === null || (skip && this.specialIds.has(id))) continue;
      kept.push(id);
    }
    if (kept.length === 0) return '';
    return this.hf.decode(kept, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  tokenToId(token: string): number | null {
    return this.hf.token_to_id(token) ?? null;
  }

  idToToken(id: number): string | null {
    if (!Number.isInteger(id) || id < 0) return null;
    return this.hf.id_to_token(id) ?? null;
  }

  private idOrNull(token: string | null): number | null {
    return token === null ? null : this.tokenToId(token);
  }
}
