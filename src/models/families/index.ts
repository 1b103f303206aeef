/** Every supported family; adding one is a file beside this one and a line here. */
import type { ModelFamily } from '../registry.js';
import { llama } from './llama.js';
import { mistral } from './mistral.js';
import { qwen2 } from './qwen2.js';

export const FAMILIES: readonly ModelFamily[] = [llama, mistral, qwen2];
