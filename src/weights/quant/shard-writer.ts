/**
 * Writes a checkpoint's tensors as it goes: tensors gather until a shard holds maxShardBytes,
 * then the shard is written (writeSafetensors). At the end a single shard becomes
 * model.safetensors; several become model-0000i-of-0000n.safetensors with the index
 * (model.safetensors.index.json) that Checkpoint.open reads.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeSafetensors, type TensorToWrite } from '../safetensors-writer.js';
import { INDEX_FILE, SINGLE_FILE } from '../checkpoint.js';

export const DEFAULT_MAX_SHARD_BYTES = 4 * 2 ** 30;
const PENDING_PREFIX = '.pending-shard-';

export class ShardWriter {
  private pending: Record<string, TensorToWrite> = {};
  private pendingBytes = 0;
  private readonly shards: { file: string; names: string[] }[] = [];
  totalBytes = 0;

  constructor(private readonly dir: string, private readonly maxShardBytes = DEFAULT_MAX_SHARD_BYTES, private readonly metadata: Record<string, string> = { format: 'pt' }) {}

  add(tensors: Record<string, TensorToWrite>): void {
    for (const [name, t] of Object.entries(tensors)) {
      this.pending[name] = t;
      this.pendingBytes += t.data.byteLength;
      this.totalBytes += t.data.byteLength;
    }
    if (this.pendingBytes >= this.maxShardBytes) this.flush();
  }

  /** Write what is left and name the shards; returns the files written (relative to dir). */
  finish(): string[] {
    if (this.pendingBytes > 0 || this.shards.length === 0) this.flush();
    const n = this.shards.length;
    if (n === 1) {
      fs.renameSync(path.join(this.dir, this.shards[0]!.file), path.join(this.dir, SINGLE_FILE));
      return [SINGLE_FILE];
    }
    const weightMap: Record<string, string> = {};
    const files = this.shards.map((s, i) => {
      const file = `model-${pad(i + 1)}-of-${pad(n)}.safetensors`;
      fs.renameSync(path.join(this.dir, s.file), path.join(this.dir, file));
      for (const name of s.names) weightMap[name] = file;
      return file;
    });
    fs.writeFileSync(path.join(this.dir, INDEX_FILE), JSON.stringify({ metadata: { total_size: this.totalBytes }, weight_map: weightMap }, null, 2) + '\n');
    return [...files, INDEX_FILE];
  }

  private flush(): void {
    const file = `${PENDING_PREFIX}${this.shards.length}.safetensors`;
    writeSafetensors(path.join(this.dir, file), this.pending, this.metadata);
    this.shards.push({ file, names: Object.keys(this.pending) });
    this.pending = {};
    this.pendingBytes = 0;
  }
}

function pad(i: number): string {
  return String(i).padStart(5, '0');
}
