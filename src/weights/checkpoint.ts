/**
 * A model folder's weights: one or more safetensors files seen as one name -> tensor map.
 * Resolution order: `model.safetensors.index.json` (sharded), else `model.safetensors`,
 * else every `*.safetensors` in the folder. All headers are read and checked at open;
 * tensor data is read on demand, one tensor at a time.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PeregrineError } from '../errors.js';
import { canConvertToF32, storageBytesPerElement, toFloat32 } from './dtype.js';
import { SafetensorsFile, missingTensorError, type RawTensor, type TensorInfo } from './safetensors.js';

export const INDEX_FILE = 'model.safetensors.index.json';
export const SINGLE_FILE = 'model.safetensors';
const SAFETENSORS_EXT = '.safetensors';

export class Checkpoint {
  readonly dir: string;
  private readonly files: SafetensorsFile[];
  /** tensor name -> the file that holds it; insertion order is file order then byte order */
  private readonly owner: Map<string, SafetensorsFile>;

  private constructor(dir: string, files: SafetensorsFile[], owner: Map<string, SafetensorsFile>) {
    this.dir = dir;
    this.files = files;
    this.owner = owner;
  }

  /**
   * Open the checkpoint in `dir` (a single `.safetensors` path is accepted too).
   * @throws PeregrineError PGN_ERR_WEIGHTS_NOT_FOUND when no weights are found, PGN_ERR_WEIGHTS_INDEX_INVALID
   *   for a broken index, and any header error of the files themselves.
   */
  static open(dir: string): Checkpoint {
    const root = path.resolve(dir);
    const stat = fs.statSync(root, { throwIfNoEntry: false });
    if (!stat) throw notFound(root, `${root} does not exist`);
    if (stat.isFile()) return Checkpoint.openFiles(path.dirname(root), [root], undefined);

    const indexPath = path.join(root, INDEX_FILE);
    if (fs.existsSync(indexPath)) {
      const weightMap = readIndex(indexPath);
      return Checkpoint.openFiles(root, shardPaths(root, indexPath, weightMap), weightMap);
    }
    const single = path.join(root, SINGLE_FILE);
    if (fs.existsSync(single)) return Checkpoint.openFiles(root, [single], undefined);
    const all = fs
      .readdirSync(root, { withFileTypes: true })
      .filter((e) => e.isFile() && e.name.endsWith(SAFETENSORS_EXT))
      .map((e) => path.join(root, e.name))
      .sort();
    if (!all.length) throw notFound(root, `no safetensors weights in ${root} (looked for ${INDEX_FILE}, ${SINGLE_FILE}, *${SAFETENSORS_EXT})`);
    return Checkpoint.openFiles(root, all, undefined);
  }

  /** Tensor names, in file order then byte order (the cheapest order to read them in). */
  names(): string[] {
    return [...this.owner.keys()];
  }

  has(name: string): boolean {
    return this.owner.has(name);
  }

  info(name: string): TensorInfo {
    const info = this.owner.get(name)?.get(name);
    if (!info) throw missingTensorError(name, this.dir, this.owner.keys());
    return info;
  }

  read(name: string): RawTensor {
    this.info(name);
    return this.owner.get(name)!.read(name);
  }

  /** Read a F32/F16/BF16 (or I32/I8/U8) tensor as f32; FP8 and I64 tensors throw PGN_ERR_WEIGHTS_DTYPE. */
  readF32(name: string): Float32Array {
    const info = this.info(name);
    if (!canConvertToF32(info.dtype)) {
      throw new PeregrineError(
        'PGN_ERR_WEIGHTS_DTYPE',
        `${info.file}: tensor '${name}' is ${info.dtype}, which does not convert to f32 (read it raw with read())`,
        { file: info.file, tensor: name, dtype: info.dtype },
      );
    }
    const raw = this.read(name);
    // read() returns a fresh buffer at offset 0: F32 needs no copy.
    if (raw.dtype === 'F32') return new Float32Array(raw.bytes.buffer, 0, raw.bytes.byteLength / 4);
    return toFloat32(raw.dtype, raw.bytes);
  }

  /** Read several tensors and concatenate along dim 0 (packed q|k|v, gate|up); all must share dtype and trailing dims. */
  readConcat(names: readonly string[]): RawTensor {
    if (!names.length) throw new PeregrineError('PGN_ERR_INVALID_ARGUMENT', `readConcat needs at least one tensor name (${this.dir})`);
    const infos = names.map((n) => this.info(n));
    const first = infos[0]!;
    for (const t of infos) {
      if (!t.shape.length) throw concatError(first, t, 'is a scalar (no dim 0 to concatenate along)');
      if (t.dtype !== first.dtype) throw concatError(first, t, `is ${t.dtype}, '${first.name}' is ${first.dtype}`);
      if (t.shape.length !== first.shape.length || t.shape.some((d, i) => i > 0 && d !== first.shape[i])) {
        throw concatError(first, t, `has shape [${t.shape.join(', ')}], trailing dims differ from '${first.name}' [${first.shape.join(', ')}]`);
      }
    }
    const shape = [infos.reduce((a, t) => a + t.shape[0]!, 0), ...first.shape.slice(1)];
    const bytes = new Uint8Array(shape.reduce((a, b) => a * b, 1) * storageBytesPerElement(first.dtype));
    let offset = 0;
    for (const t of infos) {
      const numBytes = t.end - t.start;
      this.owner.get(t.name)!.readInto(t.name, bytes.subarray(offset, offset + numBytes));
      offset += numBytes;
    }
    return { name: names.join('|'), dtype: first.dtype, shape, bytes };
  }

  close(): void {
    for (const f of this.files) f.close();
  }

  /**
   * Open every file and map names to files. With an index, a listed tensor belongs to the shard the
   * index names (it must be there); tensors a shard holds but the index omits are kept, as vLLM does.
   */
  private static openFiles(dir: string, paths: string[], weightMap: Map<string, string> | undefined): Checkpoint {
    const files: SafetensorsFile[] = [];
    try {
      for (const p of paths) files.push(SafetensorsFile.open(p));
      const owner = new Map<string, SafetensorsFile>();
      for (const file of files) {
        for (const t of file.tensors()) {
          const listed = weightMap?.get(t.name);
          if (listed !== undefined) {
            if (path.resolve(dir, listed) === file.path) owner.set(t.name, file);
            continue;
          }
          const prev = owner.get(t.name);
          if (prev) {
            throw new PeregrineError('PGN_ERR_WEIGHTS_INDEX_INVALID', `tensor '${t.name}' appears in both ${prev.path} and ${file.path}`, { dir, tensor: t.name });
          }
          owner.set(t.name, file);
        }
      }
      for (const [name, shard] of weightMap ?? []) {
        if (!owner.has(name)) {
          throw new PeregrineError(
            'PGN_ERR_WEIGHTS_INDEX_INVALID',
            `${path.join(dir, INDEX_FILE)}: weight_map puts tensor '${name}' in ${path.resolve(dir, shard)}, which does not hold it`,
            { dir, tensor: name, file: path.resolve(dir, shard) },
          );
        }
      }
      return new Checkpoint(dir, files, owner);
    } catch (e) {
      for (const f of files) f.close();
      throw e;
    }
  }
}

function readIndex(indexPath: string): Map<string, string> {
  let index: unknown;
  try {
    index = JSON.parse(fs.readFileSync(indexPath, 'utf8'));
  } catch (e) {
    throw new PeregrineError('PGN_ERR_WEIGHTS_INDEX_INVALID', `${indexPath} is not valid JSON: ${(e as Error).message}`, { file: indexPath }, { cause: e });
  }
  const weightMap = (index as { weight_map?: unknown } | null)?.weight_map;
  if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) {
    throw new PeregrineError('PGN_ERR_WEIGHTS_INDEX_INVALID', `${indexPath} has no "weight_map" object`, { file: indexPath });
  }
  const map = new Map<string, string>();
  for (const [name, shard] of Object.entries(weightMap)) {
    if (typeof shard !== 'string' || !shard) {
      throw new PeregrineError('PGN_ERR_WEIGHTS_INDEX_INVALID', `${indexPath}: weight_map entry for '${name}' is not a file name`, { file: indexPath, tensor: name });
    }
    map.set(name, shard);
  }
  return map;
}

/** Distinct shard files named by the index, in first-mention order; each must exist. */
function shardPaths(dir: string, indexPath: string, weightMap: Map<string, string>): string[] {
  const shards = [...new Set(weightMap.values())];
  for (const shard of shards) {
    if (!fs.statSync(path.resolve(dir, shard), { throwIfNoEntry: false })?.isFile()) {
      const tensor = [...weightMap].find(([, s]) => s === shard)![0];
      throw new PeregrineError('PGN_ERR_WEIGHTS_INDEX_INVALID', `${indexPath}: weight_map points at shard ${shard} (tensor '${tensor}'), which does not exist in ${dir}`, {
        file: indexPath,
        shard,
        tensor,
      });
    }
  }
  return shards.map((s) => path.resolve(dir, s)).sort();
}

function concatError(first: TensorInfo, t: TensorInfo, why: string): PeregrineError {
  return new PeregrineError('PGN_ERR_WEIGHTS_SHAPE', `cannot concatenate '${first.name}' with '${t.name}' along dim 0: '${t.name}' ${why} (${t.file})`, {
    tensor: t.name,
    file: t.file,
  });
}

function notFound(dir: string, message: string): PeregrineError {
  return new PeregrineError('PGN_ERR_WEIGHTS_NOT_FOUND', message, { dir });
}
