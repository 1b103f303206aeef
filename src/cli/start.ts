/** `npm start`: the quick-start job on the bundled model, CPU backend. */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runGenerate } from './generate.js';

/** repo root, from dist/src/cli */
export const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

const CANDIDATES = ['models/demo', 'test/fixtures/models/llama-gqa-llama3'];

export async function runStart(argv: string[]): Promise<void> {
  const dir = CANDIDATES.map((c) => join(REPO_ROOT, c)).find((d) => existsSync(join(d, 'config.json')));
  if (!dir) throw new Error(`no bundled model found (looked for ${CANDIDATES.join(', ')})`);
  process.stdout.write(`Peregrine quick start: generating on ${dir} (CPU backend)\n\n`);
  await runGenerate(['--model', dir, '--prompt', 'The old ship sailed', '--max-tokens', '48', '--temperature', '0.8', '--seed', '1', ...argv]);
}
