import {z} from 'zod';
import {validationError} from '../../core/errors';
import {
  GenerateBodySchema,
  IDEMPOTENCY_KEY_FORMAT,
  parseGenerateBody,
  planGeneration,
} from '../../core/generation';
import {sendJson} from '../responses';
import {defineRoute} from '../route';
import {JobViewSchema, jobView} from '../views';

const GenerateHeadersSchema = z.object({
  'Idempotency-Key': z
    .string()
    .regex(IDEMPOTENCY_KEY_FORMAT, '1-255 printable ASCII characters without spaces')
    .optional()
    .meta({
      description:
        'Makes the request safe to retry: a repeat returns the stored job (see also idempotency_key).',
    }),
});

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
    body: {schema: GenerateBodySchema, parse: parseGenerateBody},
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
    ],
    async handle(ctx) {
      const {config, generator} = ctx.services;
      const command = planGeneration(ctx.body, config.defaultModel);
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
          model: command.model,
          count: command.count,
          size: command.parameters.size,
          ...(config.log.prompts ? {prompt: truncate(command.prompt, 200)} : {}),
        },
        'generation started',
      );
      const {job, replayed} = await generator.generate(command, ctx.requester);
      if (replayed) ctx.res.setHeader('Idempotent-Replayed', 'true');
      ctx.labels.job_id = job.id;
      ctx.labels.image_ids = job.images.map(image => image.id).join(',');
      ctx.labels.upstream_ms = String(job.upstream_ms);
      sendJson(ctx.res, 200, await jobView(job, ctx.links));
    },
  });
}

export const generateRoutes = [generateRoute('/generate', 'generate'), generateRoute('/', 'generateAtRoot')];
