/**
 * Offline throughput (like trtllm-bench / vLLM benchmark_throughput): every request is
 * submitted at once with ignore_eos; reports total output tok/s and requests/s. Greedy by default, as
 * trtllm-bench samples (its SamplingParams set no temperature, top-k or top-p, which TensorRT-LLM reads as
 * greedy decoding), since TensorRT-LLM's published throughput is what the issues compare with; vLLM's
 * benchmark_throughput samples at temperature 1 (`temperature: 1`).
 */
import { LLM, type LLMOptions } from '../api/llm.js';
import type { StepKindTiming } from '../runner/step-timing.js';
import { formatTable, randomPrompts } from './stats.js';

export interface ThroughputOptions extends LLMOptions {
  readonly numRequests: number;
  readonly isl: number;
  readonly osl: number;
  /** 0 (the default): greedy; else sampled at that temperature, top-p 1 */
  readonly temperature?: number;
}

export interface ThroughputResult {
  readonly numRequests: number;
  readonly isl: number;
  readonly osl: number;
  /** the sampling temperature the run used (0: greedy) */
  readonly temperature: number;
  readonly elapsedS: number;
  readonly outputTokPerS: number;
  readonly totalTokPerS: number;
  readonly requestsPerS: number;
  readonly numPreemptions: number;
  /** share of step time the device waited for the host (single-device runs), null when unknown */
  readonly hostGapFraction: number | null;
  readonly meanStepMs: number | null;
  /** where the device's time went: pure decode steps and steps carrying prompt tokens (single-device runs) */
  readonly decode: StepKindTiming | null;
  readonly prefill: StepKindTiming | null;
}

export async function runThroughput(llm: LLM, o: ThroughputOptions): Promise<ThroughputResult> {
  const lo = Math.min(1000, Math.floor(llm.spec.vocabSize / 4));
  const prompts = randomPrompts(o.numRequests, o.isl, lo, llm.spec.vocabSize - 1);
  // warm-up: one short request so lazy initialisation is not timed
  await llm.generate([prompts[0]!.slice(0, Math.min(16, o.isl))], { maxTokens: 2, ignoreEos: true });
  const before = llm.stats().numPreemptions;
  const runner = llm.tp === 1 ? llm.runner : null;
  runner?.stepTiming(true);
  const temperature = o.temperature ?? 0;
  const t0 = performance.now();
  const outs = await llm.generate(prompts, { maxTokens: o.osl, ignoreEos: true, temperature, topP: 1 });
  const elapsedS = (performance.now() - t0) / 1000;
  const timing = runner ? runner.stepTiming() : null;
  const outTokens = outs.reduce((a, r) => a + r.outputs[0]!.tokenIds.length, 0);
  return {
    numRequests: o.numRequests,
    isl: o.isl,
    osl: o.osl,
    temperature,
    elapsedS,
    outputTokPerS: outTokens / elapsedS,
    totalTokPerS: (outTokens + o.numRequests * o.isl) / elapsedS,
    requestsPerS: o.numRequests / elapsedS,
    numPreemptions: llm.stats().numPreemptions - before,
    hostGapFraction: timing?.hostGapFraction ?? null,
    meanStepMs: timing?.meanStepMs ?? null,
    decode: timing?.decode ?? null,
    prefill: timing?.prefill ?? null,
  };
}

export function throughputTable(r: ThroughputResult, label: string): string {
  return formatTable([
    ['model', 'requests', 'isl/osl', 'sampling', 'elapsed s', 'output tok/s', 'total tok/s', 'req/s', 'preemptions', 'mean step ms', 'device idle %'],
    [label, r.numRequests, `${r.isl}/${r.osl}`, r.temperature === 0 ? 'greedy' : `temperature ${r.temperature}`, r.elapsedS, r.outputTokPerS, r.totalTokPerS, r.requestsPerS, r.numPreemptions,
      r.meanStepMs ?? '-', r.hostGapFraction === null ? '-' : 100 * r.hostGapFraction],
  ]) + (r.decode && r.prefill ? '\n\n' + formatTable([
    ['steps', 'count', 'mean device ms', 'device s'],
    ['decode only', r.decode.numSteps, r.decode.meanBusyMs, (r.decode.numSteps * r.decode.meanBusyMs) / 1000],
    ['with prompt tokens', r.prefill.numSteps, r.prefill.meanBusyMs, (r.prefill.numSteps * r.prefill.meanBusyMs) / 1000],
  ]) : '');
}
