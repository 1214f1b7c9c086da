import {z} from 'zod';
import {sendJson} from '../responses';
import {defineRoute, type RouteContext} from '../route';

const ConfigErrorsSchema = z
  .array(z.string())
  .optional()
  .describe(
    'What is wrong with the configuration; until it is fixed every other route answers SERVICE_ERROR.',
  );

export const HealthSchema = z
  .object({
    status: z.literal('healthy'),
    api_key_configured: z.boolean(),
    timestamp: z.string(),
    storage: z.object({kind: z.enum(['local', 'gcs'])}),
    metadata: z.object({kind: z.enum(['local', 'firestore'])}),
    default_model: z.string(),
    config_errors: ConfigErrorsSchema,
  })
  .meta({id: 'Health'});

const CheckSchema = z.object({
  ok: z.boolean(),
  reason: z.string().optional().describe('Why it is not ready.'),
});

/** The liveness body, with whether each component is ready and, if not, why. */
export const ReadinessSchema = HealthSchema.extend({
  status: z.enum(['ready', 'unavailable']),
  storage: HealthSchema.shape.storage.extend(CheckSchema.shape),
  metadata: HealthSchema.shape.metadata.extend(CheckSchema.shape),
  openai: CheckSchema,
}).meta({id: 'Readiness'});

type Check = z.infer<typeof CheckSchema>;

/** What the probes say about an instance, whether or not its configuration is valid. */
export interface ProbeFacts {
  apiKeyConfigured: boolean;
  storage: 'local' | 'gcs';
  metadata: 'local' | 'firestore';
  defaultModel: string;
  configErrors?: string[];
}

export function healthBody(facts: ProbeFacts): z.infer<typeof HealthSchema> {
  return {
    status: 'healthy',
    api_key_configured: facts.apiKeyConfigured,
    timestamp: new Date().toISOString(),
    storage: {kind: facts.storage},
    metadata: {kind: facts.metadata},
    default_model: facts.defaultModel,
    ...(facts.configErrors ? {config_errors: facts.configErrors} : {}),
  };
}

export function readinessBody(
  facts: ProbeFacts,
  checks: {storage: Check; metadata: Check; openai: Check},
): z.infer<typeof ReadinessSchema> {
  const ready = checks.storage.ok && checks.metadata.ok && checks.openai.ok && !facts.configErrors;
  const health = healthBody(facts);
  return {
    ...health,
    status: ready ? 'ready' : 'unavailable',
    storage: {...health.storage, ...checks.storage},
    metadata: {...health.metadata, ...checks.metadata},
    openai: checks.openai,
  };
}

function factsOf(ctx: RouteContext<unknown, unknown, unknown, unknown>): ProbeFacts {
  const {storeKinds, provider, config} = ctx.services;
  return {
    apiKeyConfigured: provider.configured,
    storage: storeKinds.storage,
    metadata: storeKinds.metadata,
    defaultModel: config.defaultModel,
  };
}

/** A failure as a reason safe to show anyone: its code or SQLite's text, never a message that may hold a path. */
function reasonOf(what: string, error: unknown): string {
  const {errstr, code, status} = (error ?? {}) as {errstr?: unknown; code?: unknown; status?: unknown};
  const detail = [errstr, code, status].find(
    value => (typeof value === 'string' && /^[\w .:-]{1,80}$/.test(value)) || typeof value === 'number',
  );
  return detail === undefined ? what : `${what} (${String(detail)})`;
}

export const probeRoutes = [
  /**
   * Liveness: the instance runs. It touches no store, so probes may call it
   * often, for free, and a store outage does not get healthy instances
   * replaced. A configuration error is reported here but is not a reason to
   * replace the instance: a new one would read the same configuration.
   */
  defineRoute({
    method: 'GET',
    path: '/health',
    operationId: 'health',
    summary: 'Liveness: the instance runs (configuration errors are listed); no store is called',
    open: true,
    responses: {200: {description: 'Alive', schema: HealthSchema}},
    errors: [],
    async handle(ctx) {
      sendJson(ctx.res, 200, healthBody(factsOf(ctx)));
    },
  }),
  /**
   * Readiness: the OpenAI key is set, both stores answer and take writes
   * (asked of IAM for the bucket). 503 says which does not, and why.
   */
  defineRoute({
    method: 'GET',
    path: '/ready',
    operationId: 'ready',
    summary: 'Readiness: the OpenAI key is set, the stores answer and take writes',
    open: true,
    responses: {
      200: {description: 'Ready', schema: ReadinessSchema},
      503: {description: 'A component is not ready; its `reason` says why', schema: ReadinessSchema},
    },
    errors: [],
    async handle(ctx) {
      const {services} = ctx;
      const check = async (steps: [string, () => Promise<unknown>][]): Promise<Check> => {
        for (const [what, step] of steps) {
          try {
            await step();
          } catch (error) {
            ctx.log.warn({err: error}, `readiness check failed: ${what}`);
            return {ok: false, reason: reasonOf(what, error)};
          }
        }
        return {ok: true};
      };
      const [storage, metadata] = await Promise.all([
        check([
          ['does not answer', () => services.objects.list('health-check/')],
          ['is not writable', async () => services.objects.checkWritable?.()],
        ]),
        check([
          ['does not answer', () => services.metadata.ping()],
          ['is not writable', async () => services.metadata.checkWritable?.()],
        ]),
      ]);
      const openai: Check = services.provider.configured
        ? {ok: true}
        : {ok: false, reason: 'OPENAI_API_KEY is not set'};
      const body = readinessBody(factsOf(ctx), {storage, metadata, openai});
      sendJson(ctx.res, body.status === 'ready' ? 200 : 503, body);
    },
  }),
];
