export { Tokenizer } from './tokenizer.js';
export { applyChatTemplate, renderChatTemplate, DEFAULT_ADD_GENERATION_PROMPT, type ChatMessage, type RenderOptions } from './chat-template.js';
export { IncrementalDetokenizer } from './detokenizer.js';
