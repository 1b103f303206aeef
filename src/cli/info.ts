/** `peregrine info`: what a checkpoint folder holds and how Peregrine reads it. */
import { loadModelConfig } from '../models/config.js';
import { getFamily } from '../models/registry.js';
import { Checkpoint } from '../weights/checkpoint.js';
import { Tokenizer } from '../tokenizer/tokenizer.js';
import { parse, requireString } from './args.js';
import { storageBytesPerElement } from '../weights/dtype.js';
import { findKvScaleTensors } from '../weights/quant/kv-scales.js';

const fmtKiB = (bytes: number): string => `${(bytes / 1024).toFixed(bytes < 10240 ? 2 : 1)} KiB`;

export const INFO_HELP = `peregrine info --model DIR [--json]

Prints the normalised model spec, the tensors of the checkpoint and the tokenizer.
`;

export async function runInfo(argv: string[]): Promise<void> {
  const a = parse(argv, { model: { type: 'string' }, json: { type: 'boolean' } });
  if (a.help) {
    process.stdout.write(INFO_HELP);
    return;
  }
  const dir = requireString(a.model, 'model');
  const { spec } = loadModelConfig(dir);
  const family = getFamily(spec.architecture);
  const ckpt = Checkpoint.open(dir);
  let numParams = 0;
  let numBytes = 0;
  const dtypes = new Map<string, number>();
  for (const name of ckpt.names()) {
    const info = ckpt.info(name);
    const n = info.shape.reduce((x, y) => x * y, 1);
    numParams += n;
    numBytes += n * storageBytesPerElement(info.dtype);
    dtypes.set(info.dtype, (dtypes.get(info.dtype) ?? 0) + 1);
  }
  const numTensors = ckpt.names().length;
  const kvScaleLayers = findKvScaleTensors(ckpt.names()).size;
  ckpt.close();
  // K and V of every layer, per token: bf16/f16 ('auto' on CUDA) and fp8 (E4M3)
  const kvElemsPerToken = 2 * spec.numLayers * spec.numKvHeads * spec.headDim;
  const tok = Tokenizer.exists(dir) ? await Tokenizer.load(dir) : null;
  const summary = {
    architecture: spec.architecture,
    family: family.name,
    parameters: numParams,
    checkpoint_bytes: numBytes,
    tensors: numTensors,
    tensor_dtypes: Object.fromEntries(dtypes),
    tokenizer: tok ? { vocab_size: tok.vocabSize, bos: tok.bosTokenId, eos: tok.eosTokenId, chat_template: tok.chatTemplate !== null } : null,
    kv_cache: { bytes_per_token: { auto_bf16: 2 * kvElemsPerToken, fp8: kvElemsPerToken }, fp8_scale_layers: kvScaleLayers },
    spec,
  };
  if (a.json) {
    process.stdout.write(JSON.stringify(summary) + '\n');
    return;
  }
  const lines = [
    `architecture   ${spec.architecture} (family ${family.name})`,
    `parameters     ${(numParams / 1e6).toFixed(2)} M in ${numTensors} tensors (${[...dtypes].map(([d, c]) => `${c} ${d}`).join(', ')}), ${(numBytes / 2 ** 20).toFixed(1)} MiB`,
    `layers         ${spec.numLayers}, hidden ${spec.hiddenSize}, ffn ${spec.intermediateSize}, vocab ${spec.vocabSize}`,
    `attention      ${spec.numHeads} heads, ${spec.numKvHeads} KV heads, head_dim ${spec.headDim}${spec.slidingWindow ? `, sliding window ${spec.slidingWindow}` : ''}`,
    `positions      ${spec.positional}${spec.rope ? ` (${spec.rope.type}, theta ${spec.rope.theta}, rotary dim ${spec.rope.rotaryDim})` : ''}, max ${spec.maxPositionEmbeddings}`,
    `norm           ${spec.norm.type} eps ${spec.norm.eps}; activation ${spec.activation}${spec.gatedMlp ? ' (gated)' : ''}; tied embeddings ${spec.tieWordEmbeddings}`,
    `dtype          ${spec.torchDtype}; bos ${spec.bosTokenId}; eos ${spec.eosTokenIds.join(',')}`,
    `kv cache       ${fmtKiB(2 * kvElemsPerToken)} a token in bf16/f16 (--kv-cache-dtype auto), ${fmtKiB(kvElemsPerToken)} in fp8; ` +
      `checkpoint k/v scales: ${kvScaleLayers ? `${kvScaleLayers} of ${spec.numLayers} layers` : 'none (fp8 uses 1.0)'}`,
    `tokenizer      ${tok ? `vocab ${tok.vocabSize}, chat template ${tok.chatTemplate ? 'yes' : 'no'}` : 'none (prompts as token ids)'}`,
  ];
  process.stdout.write(lines.join('\n') + '\n');
}
