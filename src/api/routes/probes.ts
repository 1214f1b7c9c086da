import {z} from 'zod';
import {sendJson} from '../responses';
import {defineRoute, type RouteContext} from '../route';

export const HealthSchema = z
  .object({
    status: z.literal('healthy'),
    api_key_configured: z.boolean(),
    timestamp: z.string(),
    storage: z.object({kind: z.enum(['local', 'gcs'])}),
    metadata: z.object({kind: z.enum(['local', 'firestore'])}),
    default_model: z.string(),
  })
  .meta({id: 'Health'});

/** The liveness body, with whether each store answered. */
export const ReadinessSchema = HealthSchema.extend({
  status: z.enum(['ready', 'unavailable']),
  storage: HealthSchema.shape.storage.extend({ok: z.boolean()}),
  metadata: HealthSchema.shape.metadata.extend({ok: z.boolean()}),
}).meta({id: 'Readiness'});

/** The body both probes answer with; readiness adds whether each store answered. */
function probeBody(
  ctx: RouteContext<unknown, unknown, unknown, unknown>,
  status: string,
  ok?: {storage: boolean; metadata: boolean},
) {
  const {storeKinds, provider, config} = ctx.services;
  return {
    status,
    api_key_configured: provider.configured,
    timestamp: new Date().toISOString(),
    storage: ok ? {kind: storeKinds.storage, ok: ok.storage} : {kind: storeKinds.storage},
    metadata: ok ? {kind: storeKinds.metadata, ok: ok.metadata} : {kind: storeKinds.metadata},
    default_model: config.defaultModel,
  };
}

export const probeRoutes = [
  /**
   * Liveness: the instance runs and its configuration is valid. It touches no
   * store, so probes may call it often, for free, and a store outage does not
   * get healthy instances replaced.
   */
  defineRoute({
    method: 'GET',
    path: '/health',
    operationId: 'health',
    summary: 'Liveness: the instance runs and its configuration is valid; no store is called',
    open: true,
    responses: {200: {description: 'Alive', schema: HealthSchema}},
    errors: [],
    async handle(ctx) {
      sendJson(ctx.res, 200, probeBody(ctx, 'healthy'));
    },
  }),
  /** Readiness: both stores answer (a listing of an empty prefix, a metadata read). 503 says which does not. */
  defineRoute({
    method: 'GET',
    path: '/ready',
    operationId: 'ready',
    summary: 'Readiness: Cloud Storage (or the local store) and Firestore answer',
    open: true,
    responses: {
      200: {description: 'Both stores answer', schema: ReadinessSchema},
      503: {description: 'A store does not answer', schema: ReadinessSchema},
    },
    errors: [],
    async handle(ctx) {
      const {services} = ctx;
      const check = async (ping: () => Promise<unknown>) => {
        try {
          await ping();
          return true;
        } catch (error) {
          ctx.log.warn({err: error}, 'readiness check failed');
          return false;
        }
      };
      const [storage, metadata] = await Promise.all([
        check(() => services.objects.list('health-check/')),
        check(() => services.metadata.ping()),
      ]);
      const ok = storage && metadata;
      sendJson(ctx.res, ok ? 200 : 503, probeBody(ctx, ok ? 'ready' : 'unavailable', {storage, metadata}));
    },
  }),
];
