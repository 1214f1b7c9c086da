import {z} from 'zod';
import type {ModelCatalogue} from '../core/catalogue';
import type {ErrorCode} from '../core/errors';
import {validationError} from '../core/errors';
import {IDEMPOTENCY_KEY_FORMAT, planGeneration, streamed, type GenerateRequest} from '../core/generation';
import type {JobRecord} from '../core/records';
import {JOB_EVENTS, answerWithJob} from './job-answer';
import type {RouteContext} from './route';
import {acceptsEventStream} from './sse';
import {JobViewSchema, type JobView} from './views';

/**
 * What every operation that makes a job (generate, edit) shares: its
 * headers, its answer, the errors it may give, and how it is run.
 */

export const GenerationHeadersSchema = z.object({
  'Idempotency-Key': z
    .string()
    .regex(IDEMPOTENCY_KEY_FORMAT, '1-255 printable ASCII characters without spaces')
    .optional()
    .meta({
      description:
        'Makes the request safe to retry: a repeat returns the stored job (see also idempotency_key).',
    }),
});

/** The answers of an operation that makes a job; `schema` is what a JSON answer holds. */
export function generationResponses<S extends typeof JobViewSchema>(schema: S) {
  return {
    200: {
      description:
        'The completed job; with `stream: true` or Accept: text/event-stream, the job as it is made, as Server-Sent Events',
      schema,
      events: JOB_EVENTS,
    },
  };
}

export const GENERATION_RESPONSES = generationResponses(JobViewSchema);

export const GENERATION_ERRORS = [
  'INVALID_JSON',
  'VALIDATION_ERROR',
  'CONTENT_POLICY_VIOLATION',
  'PAYLOAD_TOO_LARGE',
  'UNSUPPORTED_MEDIA_TYPE',
  'RATE_LIMIT_EXCEEDED',
  'UPSTREAM_ERROR',
  'UPSTREAM_TIMEOUT',
  'STORAGE_ERROR',
  'JOB_OUTCOME_UNKNOWN',
  'REQUEST_IN_PROGRESS',
  'IDEMPOTENCY_KEY_REUSED',
  'QUOTA_EXCEEDED',
  'JOB_NOT_FOUND',
  'MODEL_RETIRED',
  'MODEL_UNAVAILABLE',
  'FEATURE_NOT_AVAILABLE',
] as const satisfies readonly ErrorCode[];

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

type GenerationContext = RouteContext<
  unknown,
  unknown,
  z.output<typeof GenerationHeadersSchema>,
  GenerateRequest
>;

/**
 * Plans the request for its model, takes the Idempotency-Key header (which
 * must agree with `idempotency_key`), runs the job and answers with it, as
 * JSON or as a stream.
 */
export async function runGeneration(
  ctx: GenerationContext,
  shape?: (view: JobView, job: JobRecord) => unknown,
): Promise<void> {
  const {config, generator, now} = ctx.services;
  const request = acceptsEventStream(ctx.req) ? streamed(ctx.body) : ctx.body;
  const command = planGeneration(request, {
    catalogue: config.models,
    defaultModel: config.defaultModel,
    retiredModels: config.retiredModels,
    day: now().toISOString().slice(0, 10),
  });
  const headerKey = ctx.headers['Idempotency-Key'];
  if (headerKey !== undefined) {
    if (command.idempotencyKey !== undefined && command.idempotencyKey !== headerKey) {
      throw validationError([{field: 'idempotency_key', message: 'differs from the Idempotency-Key header'}]);
    }
    command.idempotencyKey = headerKey;
  }
  ctx.log.info(
    {
      source: request.source,
      model: command.plan.model,
      requested_model: command.requestedModel,
      count: command.count,
      size: command.plan.parameters.size,
      stream: request.stream !== null,
      ...(config.log.prompts ? {prompt: truncate(command.prompt, 200)} : {}),
    },
    'generation started',
  );
  await answerWithJob(ctx, {
    stream: request.stream !== null,
    run: onEvent => generator.generate(command, ctx.requester, onEvent),
    headersFor: job => lifecycleHeaders(config.models, job),
    ...(shape ? {shape} : {}),
  });
}
