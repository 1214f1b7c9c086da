import {z} from 'zod';
import {validationError} from '../../core/errors';
import {
  GenerateBodySchema,
  IDEMPOTENCY_KEY_FORMAT,
  parseGenerateBody,
  planGeneration,
} from '../../core/generation';
import type {ModelCatalogue} from '../../core/catalogue';
import type {JobRecord} from '../../core/records';
import {sendJson} from '../responses';
import {defineRoute} from '../route';
import {JobViewSchema, jobView} from '../views';

export const GenerateHeadersSchema = z.object({
  'Idempotency-Key': z
    .string()
    .regex(IDEMPOTENCY_KEY_FORMAT, '1-255 printable ASCII characters without spaces')
    .optional()
    .meta({
      description:
        'Makes the request safe to retry: a repeat returns the stored job (see also idempotency_key).',
    }),
});

const MODEL_DOCS = 'https://developers.openai.com/api/docs/models';

/**
 * What HTTP says about a model going away: a replaced model gets Deprecation
 * (RFC 9745, from its shutdown) and a Link to its successor; a model still
 * served until a known date gets Sunset (RFC 8594) and the same Link.
 */
export function lifecycleHeaders(catalogue: ModelCatalogue, job: JobRecord): Record<string, string> {
  const {requested_model: requested, model} = job.parameters;
  const entry = catalogue.get(requested);
  if (!entry?.shutdownDate) return {};
  const shutdown = new Date(`${entry.shutdownDate}T00:00:00Z`);
  if (model !== requested) {
    return {
      Deprecation: `@${Math.floor(shutdown.getTime() / 1000)}`,
      Link: `<${MODEL_DOCS}/${model}>; rel="successor-version"`,
    };
  }
  return {
    Sunset: shutdown.toUTCString(),
    ...(entry.replacement ? {Link: `<${MODEL_DOCS}/${entry.replacement}>; rel="successor-version"`} : {}),
  };
}

function truncate(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max)}…`;
}

/** Generates images for either payload, stores them and answers with the job. */
function generateRoute(path: string, operationId: string) {
  return defineRoute({
    method: 'POST',
    path,
    operationId,
    summary: 'Generate images and store them (rich or legacy payload)',
    headers: GenerateHeadersSchema,
    body: {schema: GenerateBodySchema, parse: parseGenerateBody, prompts: body => [body.prompt]},
    responses: {200: {description: 'The completed job', schema: JobViewSchema}},
    errors: [
      'INVALID_JSON',
      'VALIDATION_ERROR',
      'CONTENT_POLICY_VIOLATION',
      'PAYLOAD_TOO_LARGE',
      'UNSUPPORTED_MEDIA_TYPE',
      'RATE_LIMIT_EXCEEDED',
      'UPSTREAM_ERROR',
      'UPSTREAM_TIMEOUT',
      'STORAGE_ERROR',
      'REQUEST_IN_PROGRESS',
      'IDEMPOTENCY_KEY_REUSED',
      'QUOTA_EXCEEDED',
      'JOB_NOT_FOUND',
      'MODEL_RETIRED',
      'MODEL_UNAVAILABLE',
      'FEATURE_NOT_AVAILABLE',
    ],
    async handle(ctx) {
      const {config, generator, now} = ctx.services;
      const command = planGeneration(ctx.body, {
        catalogue: config.models,
        defaultModel: config.defaultModel,
        retiredModels: config.retiredModels,
        day: now().toISOString().slice(0, 10),
      });
      const headerKey = ctx.headers['Idempotency-Key'];
      if (headerKey !== undefined) {
        if (command.idempotencyKey !== undefined && command.idempotencyKey !== headerKey) {
          throw validationError([
            {field: 'idempotency_key', message: 'differs from the Idempotency-Key header'},
          ]);
        }
        command.idempotencyKey = headerKey;
      }
      ctx.log.info(
        {
          model: command.plan.model,
          requested_model: command.requestedModel,
          count: command.count,
          size: command.plan.parameters.size,
          ...(config.log.prompts ? {prompt: truncate(command.prompt, 200)} : {}),
        },
        'generation started',
      );
      const {job, replayed} = await generator.generate(command, ctx.requester);
      if (replayed) ctx.res.setHeader('Idempotent-Replayed', 'true');
      for (const [name, value] of Object.entries(lifecycleHeaders(config.models, job)))
        ctx.res.setHeader(name, value);
      ctx.labels.job_id = job.id;
      ctx.labels.image_ids = job.images.map(image => image.id).join(',');
      ctx.labels.upstream_ms = String(job.upstream_ms);
      sendJson(ctx.res, 200, await jobView(job, ctx.links));
    },
  });
}

export const generateRoutes = [generateRoute('/generate', 'generate'), generateRoute('/', 'generateAtRoot')];
