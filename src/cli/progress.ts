/**
 * A progress bar on a stream (stderr): redrawn in place on a terminal, at most every
 * REDRAW_MS; elsewhere (logs, CI) one line per tenth of the work.
 */
const BAR_WIDTH = 30;
const REDRAW_MS = 100;
const LOG_STEPS = 10;

export class ProgressBar {
  private lastDrawMs = 0;
  private lastLoggedStep = -1;
  private readonly startedMs = Date.now();

  constructor(private readonly out: NodeJS.WriteStream, private readonly label: string) {}

  /** `done` of `total` work units; `detail` is shown after the bar */
  update(done: number, total: number, detail = ''): void {
    const fraction = total > 0 ? Math.min(1, done / total) : 1;
    const now = Date.now();
    if (this.out.isTTY) {
      if (fraction < 1 && now - this.lastDrawMs < REDRAW_MS) return;
      this.lastDrawMs = now;
      this.out.write(`\r${this.line(fraction, detail)}\x1b[K`);
    } else {
      const step = Math.floor(fraction * LOG_STEPS);
      if (step === this.lastLoggedStep) return;
      this.lastLoggedStep = step;
      this.out.write(this.line(fraction, detail) + '\n');
    }
  }

  /** Ends the bar's line (terminal) so later output starts on a fresh one. */
  done(): void {
    if (this.out.isTTY) this.out.write('\n');
  }

  private line(fraction: number, detail: string): string {
    const filled = Math.round(fraction * BAR_WIDTH);
    const seconds = ((Date.now() - this.startedMs) / 1000).toFixed(1);
    const pct = (fraction * 100).toFixed(0).padStart(3);
    return `${this.label} [${'#'.repeat(filled)}${'.'.repeat(BAR_WIDTH - filled)}] ${pct}% ${seconds}s ${detail}`.trimEnd();
  }
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}
