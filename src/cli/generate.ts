/** `peregrine generate`: one prompt in, the completion out (streamed, or one JSON line). */
import { LLM } from '../api/llm.js';
import { quantizationArg, quantizeProgress } from './quantize-on-load.js';
import { deviceArg, floatArg, idListArg, intArg, kvCacheDtypeArg, parse, requireString, UsageError } from './args.js';
import { hostRanksIfRemote, NODE_HELP, NODE_OPTS, nodeOptions } from './nodes.js';

export const GENERATE_HELP = `peregrine generate --model DIR (--prompt TEXT | --prompt-ids 1,2,3) [options]

Generates a completion for one prompt.

  --model DIR          Hugging Face checkpoint folder (config.json + *.safetensors)
  --prompt TEXT        prompt text (needs the model's tokenizer)
  --prompt-ids IDS     prompt as comma-separated token ids
  --chat               treat --prompt as a user message and apply the chat template
  --max-tokens N       tokens to generate (default 64)
  --temperature T      0 = greedy (default 1, or the model's generation_config)
  --top-p P            nucleus sampling
  --top-k K            top-k sampling (-1 = off)
  --min-p P            min-p sampling
  --seed S             reproducible sampling
  --stop TEXT          stop string (repeatable)
  --ignore-eos         keep generating past end-of-sequence tokens
  --device cpu|cuda    backend (default cpu)
  --tp N               tensor-parallel ranks (default 1; must divide the heads): CPU worker
                       threads, or one GPU each (0 .. N-1) with --device cuda
  --kv-cache-dtype D   auto (default: the activation dtype) or fp8 (E4M3 KV cache)
  --quantization Q     fp8, int8 or int4: quantize the checkpoint at load (once, cached)
${NODE_HELP}  --json               print one JSON object as the last line:
                       {"token_ids", "text", "finish_reason", "prompt_token_ids", ...}
`;

export async function runGenerate(argv: string[]): Promise<void> {
  const a = parse(argv, {
    model: { type: 'string' },
    prompt: { type: 'string' },
    'prompt-ids': { type: 'string' },
    chat: { type: 'boolean' },
    'max-tokens': { type: 'string' },
    temperature: { type: 'string' },
    'top-p': { type: 'string' },
    'top-k': { type: 'string' },
    'min-p': { type: 'string' },
    seed: { type: 'string' },
    stop: { type: 'string', multiple: true },
    'ignore-eos': { type: 'boolean' },
    device: { type: 'string' },
    tp: { type: 'string' },
    'kv-cache-dtype': { type: 'string' },
    quantization: { type: 'string' },
    json: { type: 'boolean' },
    ...NODE_OPTS,
  });
  if (a.help) {
    process.stdout.write(GENERATE_HELP);
    return;
  }
  const model = requireString(a.model, 'model');
  const promptIds = idListArg(a['prompt-ids'], 'prompt-ids');
  const text = typeof a.prompt === 'string' ? a.prompt : undefined;
  if ((text === undefined) === (promptIds === undefined)) throw new UsageError('give exactly one of --prompt or --prompt-ids');
  const stop = (a.stop as unknown as string[] | undefined) ?? [];
  const params = {
    maxTokens: intArg(a['max-tokens'], 'max-tokens') ?? 64,
    temperature: floatArg(a.temperature, 'temperature'),
    topP: floatArg(a['top-p'], 'top-p'),
    topK: intArg(a['top-k'], 'top-k'),
    minP: floatArg(a['min-p'], 'min-p'),
    seed: intArg(a.seed, 'seed'),
    stop,
    ignoreEos: a['ignore-eos'] === true,
  };
  const init = Object.fromEntries(Object.entries(params).filter(([, v]) => v !== undefined));
  const kvCacheDtype = kvCacheDtypeArg(a['kv-cache-dtype']);
  const device = deviceArg(a.device), tp = intArg(a.tp, 'tp');
  const quantization = quantizationArg(a.quantization);
  const options = {
    device, tp, ...nodeOptions(a, tp, device), maxNumSeqs: 1, maxNumBatchedTokens: 512, kvCacheDtype,
    quantization, onQuantizeProgress: quantization ? quantizeProgress(quantization) : undefined,
  };
  if (await hostRanksIfRemote(options, model)) return;
  const llm = await LLM.load(model, options);
  try {
    let prompt: string | number[] = promptIds ?? text!;
    if (a.chat) {
      if (text === undefined) throw new UsageError('--chat needs --prompt');
      const { applyChatTemplate } = await import('../tokenizer/chat-template.js');
      if (!llm.tokenizer) throw new UsageError('--chat needs a model with a tokenizer');
      prompt = applyChatTemplate(llm.tokenizer, [{ role: 'user', content: text }], { addGenerationPrompt: true }).tokenIds;
    }
    const promptTokenIds = llm.encodePrompt(prompt);
    const tokenIds: number[] = [];
    let out = '';
    let finishReason: string | null = null;
    const t0 = performance.now();
    let tFirst = 0;
    if (!a.json && typeof prompt === 'string') process.stdout.write(prompt);
    for await (const d of llm.stream(promptTokenIds, init)) {
      if (tFirst === 0) tFirst = performance.now();
      tokenIds.push(...d.tokenIds);
      out += d.text;
      if (!a.json) process.stdout.write(llm.tokenizer ? d.text : d.tokenIds.map((id) => `${id} `).join(''));
      if (d.finished) finishReason = d.finishReason;
    }
    const elapsedMs = performance.now() - t0;
    if (a.json) {
      process.stdout.write(JSON.stringify({
        prompt_token_ids: promptTokenIds,
        token_ids: tokenIds,
        text: llm.tokenizer ? out : null,
        finish_reason: finishReason,
        num_prompt_tokens: promptTokenIds.length,
        num_generated_tokens: tokenIds.length,
        elapsed_ms: Math.round(elapsedMs * 100) / 100,
      }) + '\n');
    } else {
      const tps = tokenIds.length > 1 ? ((tokenIds.length - 1) / (performance.now() - tFirst)) * 1000 : 0;
      process.stdout.write(`\n\n[${tokenIds.length} tokens, ${finishReason}, ${elapsedMs.toFixed(0)} ms, ${tps.toFixed(1)} tok/s]\n`);
    }
  } finally {
    await llm.close();
  }
}
