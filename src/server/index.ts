export { createApp, PeregrineApp, type AppOptions } from './app.js';
export { EngineClient, type EngineRequest } from './engine-client.js';
export type { EngineInfo, EngineStats } from './engine-protocol.js';
export { ApiError, toApiError } from './errors.js';
export { ServerMetrics } from './metrics.js';
export { startServer, type RunningServer, type ServerOptions } from './start-server.js';
