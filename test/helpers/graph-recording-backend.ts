/**
 * A CPU backend that "captures CUDA graphs" the way the CUDA backend does, for testing the runner's
 * graph paths without a GPU: between beginCapture and endCapture its ops are recorded, not run, with
 * the arguments of the call (the same tensors, whose contents are read at replay, as a captured kernel
 * reads its buffers); replay runs the recording. What a CUDA capture forbids (uploads, downloads,
 * synchronize, a capture inside a capture) throws here, so a runner that broke those rules fails on CI.
 */
import type { Backend } from '../../src/backends/backend.js';
import { CpuBackend } from '../../src/backends/cpu/cpu-backend.js';
import type { GraphCapableBackend } from '../../src/runner/decode-graphs.js';

/** Backend ops that queue device work (recorded during a capture). */
const OPS = new Set<string>([
  'embedding', 'embeddingShard', 'rmsNorm', 'layerNorm', 'linear', 'ropeWriteKv', 'attention', 'siluMul', 'geluMul', 'gelu', 'relu',
  'add', 'gatherRows', 'copy', 'gatherTokenIds', 'scale', 'softcap', 'clamp', 'qkRmsNorm', 'moeRoute', 'moeExperts',
]);
/** Host <-> device traffic and waits: not allowed inside a CUDA capture. */
const FORBIDDEN_IN_CAPTURE = new Set<string>(['fromBytes', 'fromF32', 'fromI32', 'writeF32', 'writeI32', 'writeI32Rows', 'downloadF32', 'downloadI32', 'synchronize']);

export interface RecordedGraph {
  readonly ops: ReadonlyArray<() => void>;
  dispose(): void;
}

export interface GraphRecordingStats {
  captures: number;
  replays: number;
  /** ops recorded over all captures */
  recordedOps: number;
}

export function graphRecordingBackend(): { backend: GraphCapableBackend; stats: GraphRecordingStats } {
  const cpu = new CpuBackend();
  const stats: GraphRecordingStats = { captures: 0, replays: 0, recordedOps: 0 };
  let recording: Array<() => void> | null = null;
  const graphMethods = {
    beginCapture(): void {
      if (recording) throw new Error('beginCapture inside a capture');
      recording = [];
    },
    endCapture(): RecordedGraph {
      if (!recording) throw new Error('endCapture without beginCapture');
      const ops = recording;
      recording = null;
      stats.captures++;
      stats.recordedOps += ops.length;
      return { ops, dispose: () => {} };
    },
    replay(graph: RecordedGraph): void {
      if (recording) throw new Error('replay inside a capture');
      stats.replays++;
      for (const op of graph.ops) op();
    },
  };
  const backend = new Proxy(cpu, {
    get(target, prop) {
      if (typeof prop === 'string' && prop in graphMethods) return graphMethods[prop as keyof typeof graphMethods];
      const v = Reflect.get(target, prop, target) as unknown;
      if (typeof v !== 'function' || typeof prop !== 'string') return v;
      const fn = (v as (...a: unknown[]) => unknown).bind(target);
      if (FORBIDDEN_IN_CAPTURE.has(prop)) {
        return (...args: unknown[]) => {
          if (recording) throw new Error(`${prop} during a graph capture (a CUDA capture would fail)`);
          return fn(...args);
        };
      }
      if (!OPS.has(prop)) return fn;
      return (...args: unknown[]) => {
        if (!recording) return fn(...args);
        recording.push(() => void fn(...args));
        return undefined;
      };
    },
  }) as unknown as Backend as GraphCapableBackend;
  return { backend, stats };
}
