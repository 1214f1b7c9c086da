import {validationError} from '../../core/errors';
import {EditRequestSchema, parseEditBody, planGeneration} from '../../core/generation';
import {EditFormSchema, readEditForm} from '../edit-form';
import {sendJson} from '../responses';
import {defineRoute} from '../route';
import {JobViewSchema, jobView} from '../views';
import {GenerateHeadersSchema, lifecycleHeaders} from './generate';

/** Edits stored images, uploads or Cloud Storage objects into new ones, stored as a new job. */
function editRoute(path: string, operationId: string) {
  return defineRoute({
    method: 'POST',
    path,
    operationId,
    summary: 'Edit images into new ones, stored as a new job (JSON references or multipart uploads)',
    headers: GenerateHeadersSchema,
    body: {
      schema: EditRequestSchema,
      parse: parseEditBody,
      // Images travel in the body, as base64 JSON or as files.
      maxBytes: config => config.maxUploadBytes,
      streamed: {'multipart/form-data': {schema: EditFormSchema, read: readEditForm}},
      prompts: body => [body.prompt],
    },
    responses: {200: {description: 'The completed job', schema: JobViewSchema}},
    errors: [
      'INVALID_JSON',
      'VALIDATION_ERROR',
      'IMAGE_NOT_FOUND',
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
      const {job, replayed} = await generator.generate(command, ctx.requester);
      if (replayed) ctx.res.setHeader('Idempotent-Replayed', 'true');
      for (const [name, value] of Object.entries(lifecycleHeaders(config.models, job)))
        ctx.res.setHeader(name, value);
      ctx.labels.job_id = job.id;
      ctx.labels.image_ids = job.images.map(image => image.id).join(',');
      sendJson(ctx.res, 200, await jobView(job, ctx.links));
    },
  });
}

/** `/images/edits` is where OpenAI's SDK posts an edit, so a client built for it can point here. */
export const editRoutes = [editRoute('/edits', 'edit'), editRoute('/images/edits', 'editAtSdkPath')];
