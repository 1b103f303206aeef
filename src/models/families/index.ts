/** Every supported family; adding one is a file beside this one and a line here. */
import type { ModelFamily } from '../registry.js';
import { bloom } from './bloom.js';
import { falcon } from './falcon.js';
import { gemma } from './gemma.js';
import { gemma2 } from './gemma2.js';
import { gpt2 } from './gpt2.js';
import { gptj } from './gptj.js';
import { gptNeox } from './gpt-neox.js';
import { llama } from './llama.js';
import { mistral } from './mistral.js';
import { mixtral } from './mixtral.js';
import { mpt } from './mpt.js';
import { opt } from './opt.js';
import { phi3 } from './phi3.js';
import { qwen2 } from './qwen2.js';
import { qwen3 } from './qwen3.js';
import { starcoder2 } from './starcoder2.js';

export const FAMILIES: readonly ModelFamily[] = [
  llama, mistral, qwen2,
  gpt2, gptj, gptNeox, falcon, mpt, bloom, opt, phi3, gemma, gemma2, qwen3, mixtral, starcoder2,
];
