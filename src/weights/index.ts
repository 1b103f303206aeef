export * from './dtype.js';
export * from './safetensors.js';
export * from './safetensors-writer.js';
export * from './checkpoint.js';
