import {z} from 'zod';
import {ERROR_CODES} from '../core/errors';
import {
  JOB_STATUSES,
  JobFailureSchema,
  JobErrorSchema,
  JobParametersSchema,
  SourceImageSchema,
  WarningSchema,
  type ImageRecord,
  type JobRecord,
} from '../core/records';
import type {ImageLinker} from './urls';

/**
 * What responses carry, as zod schemas: they type the presenters below and
 * are the routes' documented responses, so the OpenAPI document cannot drift
 * from what is sent.
 */

export const IMAGE_CONTENT_TYPES = [
  'image/png',
  'image/jpeg',
  'image/webp',
  'image/gif',
  'image/svg+xml',
] as const;

export const ImageViewSchema = z
  .object({
    id: z.uuid(),
    url: z.string().describe('Absolute URL that serves the image (signed, public or through this function).'),
    url_expires_at: z.string().nullable().describe('When a signed URL stops working; null otherwise.'),
    gcs_uri: z.string().nullable().describe('gs://bucket/path in Cloud Storage mode; null otherwise.'),
    content_type: z.enum(IMAGE_CONTENT_TYPES),
    bytes: z.int().nonnegative(),
    sha256: z.string().regex(/^[0-9a-f]{64}$/),
    width: z.int().positive(),
    height: z.int().positive(),
    model: z.string().describe('The model that made it.'),
    size: z.string(),
    prompt: z.string(),
    revised_prompt: z.string().nullable(),
  })
  .meta({id: 'Image'});

export const JobViewSchema = z
  .object({
    job_id: z.uuid(),
    status: z
      .enum(JOB_STATUSES)
      .describe(
        '`running`: not finished yet; `partial`: see `failures` (allow_partial); `failed`: see `error`.',
      ),
    owner: z.string().nullable().describe('Who made it: the API key name, or the IAM caller email.'),
    source: z.enum(['legacy', 'generate', 'edit']).describe('How it was asked for.'),
    source_images: z.array(SourceImageSchema).describe("An edit's inputs; empty for a generation."),
    image_url: z.string().nullable().describe('URL of the first image; null once every image is deleted.'),
    images: z.array(ImageViewSchema),
    failures: z.array(JobFailureSchema),
    warnings: z.array(WarningSchema).describe('How the request was run differently from how it was sent.'),
    error: JobErrorSchema.nullable().describe('Why a failed job made nothing.'),
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

export const ErrorBodySchema = z
  .object({
    error: z.string().describe('What went wrong, for a person.'),
    status: z.literal('failed'),
    code: z.enum(ERROR_CODES).describe('Stable code, for a program.'),
    details: z.record(z.string(), z.unknown()).optional(),
  })
  .meta({id: 'Error'});

/**
 * The job view with OpenAI's ImagesResponse fields added, for a client of
 * OpenAI's SDK posting to `/images/edits`: `data[].url` serves each image.
 */
export const SdkJobViewSchema = JobViewSchema.extend({
  created: z.int().describe("The job's creation, in Unix seconds (OpenAI's `created`)."),
  data: z
    .array(z.object({url: z.string(), revised_prompt: z.string().nullable()}))
    .describe("The images as OpenAI's `data`: stored, so each is a URL, never `b64_json`."),
}).meta({id: 'SdkJob', description: "A job, also shaped as OpenAI's ImagesResponse."});

/** The job view as `SdkJobViewSchema` describes it. */
export function sdkJobView(view: JobView, job: JobRecord): z.infer<typeof SdkJobViewSchema> {
  return {
    ...view,
    created: Math.floor(Date.parse(job.created_at) / 1000),
    data: view.images.map(image => ({url: image.url, revised_prompt: image.revised_prompt})),
  };
}

export type ImageView = z.infer<typeof ImageViewSchema>;
export type JobView = z.infer<typeof JobViewSchema>;

export async function imageView(image: ImageRecord, job: JobRecord, links: ImageLinker): Promise<ImageView> {
  return {
    id: image.id,
    ...(await links(image)),
    content_type: image.content_type as ImageView['content_type'],
    bytes: image.bytes,
    sha256: image.sha256,
    width: image.width,
    height: image.height,
    model: image.model,
    size: image.size,
    prompt: job.prompt,
    revised_prompt: image.revised_prompt,
  };
}

export async function jobView(job: JobRecord, links: ImageLinker): Promise<JobView> {
  const images = await Promise.all(job.images.map(image => imageView(image, job, links)));
  return {
    job_id: job.id,
    status: job.status,
    owner: job.owner,
    source: job.source,
    source_images: job.source_images,
    image_url: images[0]?.url ?? null,
    images,
    failures: job.failures,
    warnings: job.warnings,
    error: job.error,
    usage: job.usage,
    prompt: job.prompt,
    parameters: job.parameters,
    metadata: job.metadata,
    created_at: job.created_at,
    updated_at: job.updated_at,
    completed_at: job.completed_at,
  };
}
