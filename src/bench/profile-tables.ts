/** The tables of `bench latency --profile`: per op, the step's parts, the attention plans, and the linears against cuBLASLt. */
import type { OpRow } from './op-profiler.js';
import type { StepProfile } from './decode-profile.js';
import { formatTable } from './stats.js';

const pct = (fraction: number): string => (Number.isFinite(fraction) ? (100 * fraction).toFixed(1) : '-');
const gbs = (bytes: number, ms: number): number => (ms > 0 ? bytes / ms / 1e6 : NaN);

/**
 * @param benchCopyTBs the latency bench's copy bandwidth, used where the profile has none of its own (CPU)
 * @param stepMs the runner's measured decode step at this batch (graph + inputs + sampling + host), NaN if unknown
 */
export function profileTables(p: StepProfile, benchCopyTBs: number, stepMs: number): string {
  const copyTBs = p.copyTBs ?? benchCopyTBs;
  const hasGraph = p.ops.every((o) => o.graphMs !== undefined) && p.graphMs !== null;
  /** the time a row's bandwidth is judged by: alone in a graph where measured, else eager */
  const rowMs = (o: OpRow) => (hasGraph ? o.graphMs! : o.ms);
  const totalMs = p.ops.reduce((s, o) => s + rowMs(o), 0);
  const numCalls = p.ops.reduce((s, o) => s + o.calls, 0);
  const bytes = p.ops.reduce((s, o) => s + o.bytes, 0);
  const pctCopy = (b: number, ms: number) => pct(gbs(b, ms) / (copyTBs * 1000));

  const title = `decode step profile (${p.device}, ${p.date}): batch ${p.numSeqs}${p.numRows !== p.numSeqs ? ` (run as ${p.numRows} rows)` : ''}, `
    + `attention planned for ${p.maxSeqlenK} keys; copy ${copyTBs.toFixed(2)} TB/s (read + write)`;
  const note = hasGraph
    ? 'eager ms: the op in an eagerly run step, between two events (median of runs; ~3 us an op of event overhead on an H100); '
      + 'graph ms: the same calls alone, replayed as one CUDA graph. Bandwidth and shares from graph ms.'
    : `ms: the op in an eagerly run step, ${p.device === 'cpu' ? 'wall' : 'device'} time (median of runs).`;
  const graphCol = <T,>(cells: T[]): T[] => (hasGraph ? cells : cells.filter((_, i) => i !== 3));
  const ops = formatTable([
    graphCol(['op', 'calls', hasGraph ? 'eager ms' : 'ms', 'graph ms', '% of sum', 'MB', 'GB/s', '% of copy BW']),
    ...p.ops.map((o) => graphCol([o.op, o.calls, o.ms, o.graphMs ?? '-', pct(rowMs(o) / totalMs), o.bytes / 1e6, gbs(o.bytes, rowMs(o)), o.bytes ? pctCopy(o.bytes, rowMs(o)) : '-'])),
    graphCol(['sum of ops', numCalls, p.forwardMs, totalMs, '100', bytes / 1e6, gbs(bytes, totalMs), pctCopy(bytes, totalMs)]),
  ]);

  const parts: (string | number)[][] = [['step part', 'ms', 'what'], ['forward, eager: sum of ops', p.forwardMs, 'the ms column']];
  parts.push(p.device === 'cpu'
    ? ['forward, eager: wall time', p.spanMs, `the whole forward (outside the ops: ${(p.spanMs - p.forwardMs).toFixed(3)} ms)`]
    : ['forward, eager: device span', p.spanMs, `first op's start to last op's end (idle inside: ${(p.spanMs - p.forwardMs).toFixed(3)} ms)`]);
  if (hasGraph) parts.push(['forward, rows alone as graphs: sum', totalMs, 'the graph ms column']);
  if (p.graphMs !== null) {
    const vsRows = hasGraph ? `; - sum of rows: ${(p.graphMs - totalMs).toFixed(3)} ms` : '';
    parts.push(['forward, one CUDA graph', p.graphMs, `what the runner replays; - eager sum: ${(p.graphMs - p.forwardMs).toFixed(3)} ms${vsRows}`]);
  }
  const rest = stepMs - (p.graphMs ?? p.forwardMs) - p.uploadMs - p.sampleMs;
  parts.push(
    ['runner step (decode ms/step above)', stepMs, 'forward + inputs + sampling + host work'],
    ['  input uploads', p.uploadMs, `host wall time, one write per ForwardBatch array (7); one packed write of the same bytes: ${p.packedUploadMs.toFixed(3)} ms`],
    ['  sampling', p.sampleMs, 'host wall time of the sampler for the step\'s rows (greedy)'],
    ['  rest', rest, `step - ${p.graphMs !== null ? 'graph' : 'eager forward'} - uploads - sampling: batch building, launches, waits`],
  );

  const out = [title, note, ops, formatTable(parts)];
  if (p.attention.length > 0) {
    const layers = p.ops.find((o) => o.op === 'attention')?.calls ?? 1;
    out.push('attention alone, every layer of the step (one CUDA graph), by the maxSeqlenK its split count is planned for', formatTable([
      ['planned for keys', 'kernel', 'splits', 'ms per step', 'us per layer'],
      ...p.attention.map((a) => [a.maxSeqlenK === p.maxSeqlenK ? `${a.maxSeqlenK} (runner's graph)` : String(a.maxSeqlenK), a.kernel ?? '-', a.numSplits ?? '-', a.ms, (1000 * a.ms) / layers]),
    ]));
  }
  if (p.gemms.length > 0) {
    const byOp = new Map(p.ops.map((o) => [o.op, o]));
    out.push(`linears against cuBLASLt alone (same shapes and weights, one CUDA graph per linear); step: the row's ${hasGraph ? 'graph' : 'eager'} ms per call`, formatTable([
      ['linear', 'M x N x K', 'calls', 'step takes', 'step us/call', 'cuBLASLt us/call', '% of cuBLASLt', 'step GB/s', 'cuBLASLt GB/s'],
      ...p.gemms.map((g) => {
        const o = byOp.get(g.op);
        const stepUs = o ? (1000 * rowMs(o)) / o.calls : NaN;
        const refUs = g.cublasLtMs === null ? NaN : 1000 * g.cublasLtMs;
        const callBytes = o ? o.bytes / o.calls : 0;
        return [g.op, `${g.M}x${g.N}x${g.K}`, o?.calls ?? 0, g.path, stepUs, refUs, pct(refUs / stepUs), gbs(callBytes, stepUs / 1000), gbs(callBytes, refUs / 1000)];
      }),
    ]));
  }
  return out.join('\n\n');
}
