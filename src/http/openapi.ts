import {z} from 'zod';
import {ERROR_CODES, type ErrorCode} from '../errors';
import {GenerateRequestSchema, LegacyRequestSchema} from '../domain/generate-request';
import {HTTP_STATUS} from './error-response';
import {
  DeletedSchema,
  ErrorBodySchema,
  HealthSchema,
  ReadinessSchema,
  ImageUrlSchema,
  ImageViewSchema,
  JobFailureSchema,
  JobListSchema,
  JobParametersSchema,
  JobViewSchema,
} from './schemas';

const ref = (id: string) => ({$ref: `#/components/schemas/${id}`});
const json = (schema: object) => ({'application/json': {schema}});

/**
 * Error responses a route can give, grouped by status, each listing its codes.
 * Every route that uses it may also answer UNAUTHENTICATED (when API_KEYS is
 * set) and SERVICE_ERROR.
 */
function errors(...codes: ErrorCode[]): Record<string, object> {
  const byStatus = new Map<number, ErrorCode[]>();
  for (const code of [...codes, 'UNAUTHENTICATED' as const, 'SERVICE_ERROR' as const]) {
    const status = HTTP_STATUS[code];
    byStatus.set(status, [...new Set([...(byStatus.get(status) ?? []), code])]);
  }
  return Object.fromEntries(
    [...byStatus].map(([status, list]) => [
      String(status),
      {description: `Error: ${list.join(', ')}`, content: json(ref('Error'))},
    ]),
  );
}

const idParam = (name: string, what: string) => ({
  name,
  in: 'path',
  required: true,
  description: `${what} id (a UUID).`,
  schema: {type: 'string', format: 'uuid'},
});

function buildDocument(): Record<string, unknown> {
  // Every schema with a `meta({id})` becomes a component; the same zod schemas validate requests.
  const registry = z.registry<{id: string}>();
  for (const schema of [
    GenerateRequestSchema,
    LegacyRequestSchema,
    ImageViewSchema,
    JobParametersSchema,
    JobFailureSchema,
    JobViewSchema,
    JobListSchema,
    ImageUrlSchema,
    DeletedSchema,
    HealthSchema,
    ReadinessSchema,
    ErrorBodySchema,
  ]) {
    const id = z.globalRegistry.get(schema)?.id;
    if (!id) throw new Error('every documented schema needs meta({id})');
    registry.add(schema, {id});
  }
  const {schemas} = z.toJSONSchema(registry, {
    target: 'draft-2020-12',
    io: 'input',
    uri: id => `#/components/schemas/${id}`,
    unrepresentable: 'any',
  }) as unknown as {schemas: Record<string, Record<string, unknown>>};
  for (const schema of Object.values(schemas)) {
    delete schema.$schema;
    delete schema.$id; // components are addressed by their key, not an $id
  }

  const imageNotFound = errors('IMAGE_NOT_FOUND');
  const generateOperation = (operationId: string) => ({
    operationId,
    summary: 'Generate images and store them (rich or legacy payload)',
    parameters: [
      {
        name: 'Idempotency-Key',
        in: 'header',
        required: false,
        description:
          'Makes the request safe to retry: a repeat returns the stored job (see also idempotency_key).',
        schema: {type: 'string', pattern: '^[\\x21-\\x7e]{1,255}$'},
      },
    ],
    requestBody: {
      required: true,
      content: json({oneOf: [ref('GenerateRequest'), ref('LegacyGenerateRequest')]}),
    },
    responses: {
      '200': {description: 'The completed job', content: json(ref('Job'))},
      ...errors(
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
      ),
    },
  });
  return {
    openapi: '3.1.0',
    info: {
      title: 'imagegen',
      version: '1.0.0',
      description:
        'Turns a text prompt into stored images with the OpenAI Images API, Cloud Storage and Firestore. ' +
        `Every error is JSON with a stable code: ${ERROR_CODES.join(', ')}.`,
    },
    paths: {
      '/': {post: generateOperation('generateAtRoot')},
      '/generate': {post: generateOperation('generate')},
      '/health': {
        get: {
          operationId: 'health',
          security: [],
          summary: 'Liveness: the instance runs and its configuration is valid; no store is called',
          responses: {'200': {description: 'Alive', content: json(ref('Health'))}},
        },
      },
      '/ready': {
        get: {
          operationId: 'ready',
          security: [],
          summary: 'Readiness: Cloud Storage (or the local store) and Firestore answer',
          responses: {
            '200': {description: 'Both stores answer', content: json(ref('Readiness'))},
            '503': {description: 'A store does not answer', content: json(ref('Readiness'))},
          },
        },
      },
      '/jobs': {
        get: {
          operationId: 'listJobs',
          summary: 'Jobs, newest first',
          parameters: [
            {name: 'limit', in: 'query', schema: {type: 'integer', minimum: 1, maximum: 100, default: 20}},
            {
              name: 'cursor',
              in: 'query',
              schema: {type: 'string'},
              description: '`next_cursor` of the previous page.',
            },
            {name: 'status', in: 'query', schema: {type: 'string', enum: ['completed', 'partial']}},
            {
              name: 'metadata.{key}',
              in: 'query',
              schema: {type: 'string'},
              description: 'Only jobs whose metadata has this key with this value (one key per query).',
            },
          ],
          responses: {
            '200': {description: 'A page of jobs', content: json(ref('JobList'))},
            ...errors('VALIDATION_ERROR', 'STORAGE_ERROR'),
          },
        },
      },
      '/jobs/{id}': {
        parameters: [idParam('id', 'Job')],
        get: {
          operationId: 'getJob',
          summary: 'A job with fresh image URLs',
          responses: {
            '200': {description: 'The job', content: json(ref('Job'))},
            ...errors('JOB_NOT_FOUND', 'STORAGE_ERROR'),
          },
        },
        delete: {
          operationId: 'deleteJob',
          summary: 'Delete a job and all its images',
          responses: {
            '200': {description: 'Deleted', content: json(ref('Deleted'))},
            ...errors('JOB_NOT_FOUND', 'STORAGE_ERROR'),
          },
        },
      },
      '/images/{id}': {
        parameters: [idParam('id', 'Image')],
        get: {
          operationId: 'getImage',
          summary: 'The image bytes',
          parameters: [{name: 'If-None-Match', in: 'header', schema: {type: 'string'}}],
          responses: {
            '200': {
              description: 'The image; ETag is the quoted sha256',
              content: {'image/png': {}, 'image/jpeg': {}, 'image/webp': {}},
            },
            '304': {description: 'Not modified'},
            ...errors('IMAGE_NOT_FOUND', 'STORAGE_ERROR'),
          },
        },
        head: {
          operationId: 'headImage',
          summary: 'The image headers',
          responses: {
            '200': {description: 'Headers only'},
            '304': {description: 'Not modified'},
            ...imageNotFound,
          },
        },
        delete: {
          operationId: 'deleteImage',
          summary: 'Delete an image (object and record)',
          responses: {
            '200': {description: 'Deleted', content: json(ref('Deleted'))},
            ...errors('IMAGE_NOT_FOUND', 'STORAGE_ERROR'),
          },
        },
      },
      '/images/{id}/url': {
        parameters: [idParam('id', 'Image')],
        get: {
          operationId: 'getImageUrl',
          summary: 'A fresh URL for the image (renews expired signed URLs)',
          responses: {
            '200': {description: 'The URL', content: json(ref('ImageUrl'))},
            ...errors('IMAGE_NOT_FOUND', 'STORAGE_ERROR'),
          },
        },
      },
      '/openapi.json': {
        get: {
          operationId: 'openapi',
          security: [],
          summary: 'This document',
          responses: {'200': {description: 'OpenAPI 3.1'}},
        },
      },
    },
    components: {
      schemas,
      securitySchemes: {
        apiKey: {type: 'apiKey', in: 'header', name: 'X-API-Key', description: 'When API_KEYS is set.'},
        bearer: {
          type: 'http',
          scheme: 'bearer',
          description: 'An API key (API_KEYS), or a Google ID token for IAM.',
        },
      },
    },
    // No key needed unless API_KEYS is set; deployed privately, IAM checks a Google ID token first.
    security: [{}, {apiKey: []}, {bearer: []}],
    'x-error-codes': Object.fromEntries(ERROR_CODES.map(code => [code, HTTP_STATUS[code]])),
  };
}

let cached: Record<string, unknown> | undefined;

export function openApiDocument(): Record<string, unknown> {
  return (cached ??= buildDocument());
}
