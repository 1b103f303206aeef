/** GET /metrics: Prometheus text format; engine gauges are refreshed from the engine at each scrape. */
import type { Handler } from '../context.js';

export const metricsRoute: Handler = async (ctx, _req, res) => {
  ctx.metrics.setEngineStats(ctx.engine.isAlive ? await ctx.engine.stats().catch(() => null) : null);
  const text = await ctx.metrics.render();
  res.writeHead(200, { 'Content-Type': ctx.metrics.contentType, 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
};
