// The package's public entry point loads without a GPU and exposes the documented API.
import { test } from 'node:test';
import assert from 'node:assert/strict';

test('the public entry point exports the library API', async () => {
  const m = await import('../src/index.js');
  for (const name of ['LLM', 'makeSamplingParams', 'PeregrineError', 'isPeregrineError', 'supportedArchitectures', 'startServer', 'buildQuantizedCheckpoint']) {
    assert.ok(name in m, `missing export ${name}`);
  }
  assert.ok(m.supportedArchitectures().includes('LlamaForCausalLM'));
  assert.ok(m.supportedArchitectures().length >= 16);
});
