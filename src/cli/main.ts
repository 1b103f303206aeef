#!/usr/bin/env node
/** The `peregrine` command. */
import { describeError, UsageError } from './args.js';

const HELP = `peregrine <command> [options]

Commands:
  generate   generate a completion for one prompt
  info       describe a checkpoint folder
  start      the quick-start job (npm start): serve the bundled demo model
  serve      OpenAI-compatible HTTP server
  build      quantize a checkpoint (fp8, int8, int4) into a new folder
  bench      benchmarks
  cache      list or clear the quantized builds of --quantization

Run "peregrine <command> --help" for the options of a command.
`;

type Command = (argv: string[]) => Promise<void>;

const commands: Record<string, () => Promise<Command>> = {
  generate: async () => (await import('./generate.js')).runGenerate,
  info: async () => (await import('./info.js')).runInfo,
  start: async () => (await import('./start.js')).runStart,
  bench: async () => (await import('./bench.js')).runBench,
  serve: async () => (await import('./serve.js')).runServe,
  build: async () => (await import('./build.js')).runBuild,
  cache: async () => (await import('./cache.js')).runCache,
};

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(HELP);
    return name ? 0 : 2;
  }
  const load = commands[name];
  if (!load) {
    process.stderr.write(`unknown command "${name}"\n\n${HELP}`);
    return 2;
  }
  try {
    await (await load())(rest);
    return 0;
  } catch (e) {
    process.stderr.write(describeError(e) + '\n');
    return e instanceof UsageError ? 2 : 1;
  }
}

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
  // after an error, exit at once: a failed start may leave a thread blocked in a native call for ever (the
  // worker of an NCCL init for a rank that died first; unref'd, but not stoppable), so shutdown does not
  // wait on it (stderr is written synchronously)
  if (code !== 0) process.exit(code);
});
