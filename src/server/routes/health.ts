/**
 * GET /health: 200 while the engine worker runs and answers; 503 in OpenAI's error shape
 * (code `engine_dead`, the reason in the message) once it died or stopped answering.
 */
import { sendJson, type Handler } from '../context.js';
import { engineDead, sendError } from '../errors.js';

/** How long the engine may take to answer a health probe. */
export const HEALTH_TIMEOUT_MS = 5000;

export const healthRoute: Handler = async (ctx, _req, res) => {
  if (!ctx.engine.isAlive) return sendError(res, engineDead(ctx.engine.deadReason ?? 'unknown'));
  try {
    const stats = await ctx.engine.stats(HEALTH_TIMEOUT_MS);
    sendJson(res, 200, { status: 'ok', num_requests_running: stats.numRunning, num_requests_waiting: stats.numWaiting });
  } catch (e) {
    sendError(res, engineDead((e as Error).message));
  }
};
