import {z} from 'zod';
import {ERROR_CODES} from '../errors';
import {MODEL_IDS} from '../domain/models';

/**
 * Response shapes, as zod schemas. They type the presenters and feed the
 * OpenAPI document, so the document cannot drift from what is sent.
 */

export const ImageViewSchema = z
  .object({
    id: z.uuid(),
    url: z.string().describe('Absolute URL that serves the image (signed, public or through this function).'),
    url_expires_at: z.string().nullable().describe('When a signed URL stops working; null otherwise.'),
    gcs_uri: z.string().nullable().describe('gs://bucket/path in Cloud Storage mode; null otherwise.'),
    content_type: z.enum(['image/png', 'image/jpeg', 'image/webp']),
    bytes: z.int().nonnegative(),
    sha256: z.string().regex(/^[0-9a-f]{64}$/),
    width: z.int().positive(),
    height: z.int().positive(),
    model: z.enum(MODEL_IDS),
    size: z.string(),
    prompt: z.string(),
    revised_prompt: z.string().nullable(),
  })
  .meta({id: 'Image'});

export const JobParametersSchema = z
  .object({
    count: z.int().min(1).max(10),
    model: z.enum(MODEL_IDS),
    size: z.string(),
    quality: z.string().nullable(),
    style: z.string().nullable(),
    background: z.string().nullable(),
    output_format: z.string().nullable(),
    output_compression: z.int().nullable(),
    moderation: z.string().nullable(),
    user: z.string().nullable(),
    allow_partial: z.boolean(),
  })
  .meta({id: 'JobParameters'});

export const JobFailureSchema = z
  .object({
    first_index: z.int().nonnegative(),
    count: z.int().positive(),
    code: z.enum(ERROR_CODES),
    error: z.string(),
  })
  .meta({id: 'JobFailure', description: 'An upstream call of a partial job that made no images.'});

export const JobViewSchema = z
  .object({
    job_id: z.uuid(),
    status: z.enum(['completed', 'partial']).describe('`partial`: see `failures` (only with allow_partial).'),
    image_url: z.string().nullable().describe('URL of the first image; null once every image is deleted.'),
    images: z.array(ImageViewSchema),
    failures: z.array(JobFailureSchema),
    usage: z
      .record(z.string(), z.unknown())
      .nullable()
      .describe('Token usage as OpenAI reports it (GPT image models).'),
    prompt: z.string(),
    parameters: JobParametersSchema,
    metadata: z.record(z.string(), z.string()),
    created_at: z.string(),
    updated_at: z.string(),
    completed_at: z.string().nullable(),
  })
  .meta({id: 'Job'});

export const JobListSchema = z
  .object({
    jobs: z.array(JobViewSchema),
    next_cursor: z.string().nullable().describe('Pass as `cursor` for the next page; null at the end.'),
  })
  .meta({id: 'JobList'});

export const ImageUrlSchema = z
  .object({
    id: z.uuid(),
    url: z.string(),
    url_expires_at: z.string().nullable(),
    gcs_uri: z.string().nullable(),
  })
  .meta({id: 'ImageUrl'});

export const DeletedSchema = z
  .object({
    status: z.literal('deleted'),
    job_id: z.uuid(),
    image_ids: z.array(z.uuid()),
  })
  .meta({id: 'Deleted'});

export const HealthSchema = z
  .object({
    status: z.literal('healthy'),
    api_key_configured: z.boolean(),
    timestamp: z.string(),
    storage: z.object({kind: z.enum(['local', 'gcs'])}),
    metadata: z.object({kind: z.enum(['local', 'firestore'])}),
    default_model: z.enum(MODEL_IDS),
  })
  .meta({id: 'Health'});

/** The liveness body, with whether each store answered. */
export const ReadinessSchema = HealthSchema.extend({
  status: z.enum(['ready', 'unavailable']),
  storage: HealthSchema.shape.storage.extend({ok: z.boolean()}),
  metadata: HealthSchema.shape.metadata.extend({ok: z.boolean()}),
}).meta({id: 'Readiness'});

export const ErrorBodySchema = z
  .object({
    error: z.string().describe('What went wrong, for a person.'),
    status: z.literal('failed'),
    code: z.enum(ERROR_CODES).describe('Stable code, for a program.'),
    details: z.record(z.string(), z.unknown()).optional(),
  })
  .meta({id: 'Error'});

const metadataFilterKey = /^metadata\.([A-Za-z0-9_.-]{1,64})$/;

/** GET /jobs query: limit, cursor, status, and one `metadata.<key>=<value>` filter. */
export const ListJobsQuerySchema = z
  .object({
    limit: z
      .string()
      .regex(/^\d+$/, 'must be a whole number')
      .transform(Number)
      .pipe(z.int().min(1, 'must be at least 1').max(100, 'must be at most 100'))
      .optional(),
    cursor: z.string().max(512).optional(),
    status: z.enum(['completed', 'partial']).optional(),
  })
  .catchall(z.string().max(512));

export function metadataFilterFrom(query: Record<string, unknown>): {key: string; value: string}[] {
  const filters: {key: string; value: string}[] = [];
  for (const [name, value] of Object.entries(query)) {
    const match = metadataFilterKey.exec(name);
    if (match && typeof value === 'string') filters.push({key: match[1]!, value});
  }
  return filters;
}

export const KNOWN_QUERY_KEYS = new Set(['limit', 'cursor', 'status']);
export function isMetadataFilterKey(name: string): boolean {
  return metadataFilterKey.test(name);
}

export type ImageView = z.infer<typeof ImageViewSchema>;
export type JobView = z.infer<typeof JobViewSchema>;
