/**
 * `npm start`: the main job. Serves the bundled demo model on the CPU backend, first
 * asking it one question through its own OpenAI-compatible API so the terminal shows
 * that it talks. `--once` prints that answer and exits instead of serving.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runServe } from './serve.js';

/** repo root, from dist/src/cli */
export const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

const CANDIDATES = ['models/demo', 'test/fixtures/models/llama-gqa-llama3'];
const FIRST_QUESTION = 'Hello! Who are you?';

export const START_HELP = `peregrine start [--once] [serve options]

Serves the bundled demo model (models/demo) on 127.0.0.1:8000 with the CPU backend,
after printing its answer to a first question. --once: print the answer and exit.
Other options are passed to "peregrine serve".
`;

export async function runStart(argv: string[]): Promise<void> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(START_HELP);
    return;
  }
  const once = argv.includes('--once');
  const rest = argv.filter((a) => a !== '--once');
  const dir = CANDIDATES.map((c) => join(REPO_ROOT, c)).find((d) => existsSync(join(d, 'config.json')));
  if (!dir) throw new Error(`no bundled model found (looked for ${CANDIDATES.join(', ')})`);
  const port = once ? ['--port', '0'] : [];
  await runServe(['--model', dir, '--device', 'cpu', ...port, ...rest], {
    onListening: async (url, model) => {
      const res = await fetch(`${url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(process.env.PEREGRINE_API_KEY ? { authorization: `Bearer ${process.env.PEREGRINE_API_KEY}` } : {}) },
        body: JSON.stringify({ model, messages: [{ role: 'user', content: FIRST_QUESTION }], max_tokens: 64, temperature: 0.7, seed: 1 }),
      });
      const j = (await res.json()) as { choices?: Array<{ message: { content: string } }>; error?: { message: string } };
      const answer = j.choices?.[0]?.message.content ?? `(error: ${j.error?.message})`;
      process.stdout.write(`\nuser: ${FIRST_QUESTION}\n${model}: ${answer.trim()}\n\n`);
      if (once) return true;
      process.stdout.write(`try it:\n  curl ${url}/v1/completions -H 'content-type: application/json' -d '{"model": "${model}", "prompt": "The sea", "max_tokens": 32}'\n\n`);
      return false;
    },
  });
}
