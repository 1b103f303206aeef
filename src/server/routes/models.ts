/** GET /v1/models and GET /v1/models/{id}: the one model this server serves. */
import type { IncomingMessage } from 'node:http';
import { sendJson, type Handler, type ServerContext } from '../context.js';
import { modelNotFound } from '../errors.js';

function modelCard(ctx: ServerContext) {
  return {
    id: ctx.servedModelName,
    object: 'model',
    created: ctx.createdS,
    owned_by: 'peregrine',
    root: ctx.modelDir,
    parent: null,
    max_model_len: ctx.engine.info.maxModelLen,
  };
}

export const listModelsRoute: Handler = async (ctx, _req, res) => {
  sendJson(res, 200, { object: 'list', data: [modelCard(ctx)] });
};

export const MODEL_PATH_PREFIX = '/v1/models/';

export const getModelRoute: Handler = async (ctx, req: IncomingMessage, res) => {
  const path = new URL(req.url ?? '/', 'http://x').pathname;
  const id = decodeURIComponent(path.slice(MODEL_PATH_PREFIX.length));
  if (id !== ctx.servedModelName) throw modelNotFound(id, ctx.servedModelName);
  sendJson(res, 200, modelCard(ctx));
};
