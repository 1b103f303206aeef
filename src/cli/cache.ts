/** `peregrine cache list | clear`: the quantized builds `--quantization` made at load. */
import { clearCachedBuilds, defaultCacheDir, listCachedBuilds } from '../weights/quant/quantize-on-load.js';
import { parse, UsageError } from './args.js';
import { formatBytes } from './progress.js';

export const CACHE_HELP = `peregrine cache <list|clear> [--dir DIR]

The quantized builds that --quantization fp8|int8|int4 made at load (serve, generate, bench), one
per checkpoint and format, kept so that later loads skip the work:
  list    each build: its folder, size, the checkpoint it came from and when
  clear   remove them all (they are made again on the next load that asks)
  --dir DIR   the cache folder (default: $PEREGRINE_CACHE_DIR, else ~/.cache/peregrine)
`;

export async function runCache(argv: string[]): Promise<void> {
  const [sub, ...rest] = argv;
  if (!sub || sub === '--help' || sub === '-h') return void process.stdout.write(CACHE_HELP);
  const a = parse(rest, { dir: { type: 'string' } });
  if (a.help) return void process.stdout.write(CACHE_HELP);
  const dir = typeof a.dir === 'string' ? a.dir : defaultCacheDir();
  if (sub === 'list') {
    const builds = listCachedBuilds(dir);
    if (builds.length === 0) return void process.stdout.write(`no quantized builds in ${dir}\n`);
    for (const b of builds) process.stdout.write(`${b.dir}  ${formatBytes(b.bytes)}  from ${b.source}  (${b.createdAt})\n`);
    return;
  }
  if (sub === 'clear') {
    const removed = clearCachedBuilds(dir);
    process.stdout.write(`removed ${removed.length} quantized build${removed.length === 1 ? '' : 's'} from ${dir}\n`);
    return;
  }
  throw new UsageError(`unknown cache command "${sub}" (list, clear)`);
}
