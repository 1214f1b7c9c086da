import {z} from 'zod';
import {ERROR_CODES} from './errors';
import {UpstreamParametersSchema, WARNING_CODES, type GenerationWarning} from './generation';
import {MAX_IMAGES_PER_REQUEST} from './models';

/** Token usage exactly as OpenAI reports it (GPT image models), or null. */
export type Usage = Record<string, unknown> | null;

/** One stored image: the object and what we know of it. */
export interface ImageRecord {
  id: string;
  job_id: string;
  /** Position in the job, from 0. */
  index: number;
  object_path: string;
  content_type: string;
  bytes: number;
  sha256: string;
  width: number;
  height: number;
  /** The model that made it. */
  model: string;
  size: string;
  revised_prompt: string | null;
  created_at: string;
}

export const JOB_STATUSES = ['running', 'completed', 'partial', 'failed'] as const;

/**
 * `running`: recorded before any upstream call, with a lease; `completed`;
 * `partial`: some upstream calls failed and `allow_partial` was set (see
 * `failures`); `failed`: nothing was kept (see `error`).
 */
export type JobStatus = (typeof JOB_STATUSES)[number];

/** Statuses of a job whose images are final. */
export const FINISHED_STATUSES: readonly JobStatus[] = ['completed', 'partial'];

export const JobFailureSchema = z
  .object({
    first_index: z.int().nonnegative(),
    count: z.int().positive(),
    code: z.enum(ERROR_CODES),
    error: z.string(),
  })
  .meta({id: 'JobFailure', description: 'An upstream call of a partial job that made no images.'});

/** An upstream call of a partial job that produced no images. */
export type JobFailure = z.infer<typeof JobFailureSchema>;

type Stored<S extends z.ZodRawShape> = {
  [K in keyof S]: z.ZodNullable<S[K] extends z.ZodOptional<infer Inner> ? Inner : S[K]>;
};

/** Every upstream parameter, null when the request left it to OpenAI. */
function storedParameters<S extends z.ZodRawShape>(shape: S): Stored<S> {
  return Object.fromEntries(
    Object.entries(shape).map(([key, schema]) => [
      key,
      ((schema instanceof z.ZodOptional ? schema.unwrap() : schema) as z.ZodType).nullable(),
    ]),
  ) as unknown as Stored<S>;
}

/** The parameters a job was run with, in the request's own vocabulary. */
export const JobParametersSchema = z
  .object({
    count: z.int().min(1).max(MAX_IMAGES_PER_REQUEST),
    requested_model: z.string().describe('The model the request named (or DEFAULT_MODEL).'),
    model: z.string().describe('The model the images were made with; see `warnings` when it differs.'),
    ...storedParameters(UpstreamParametersSchema.shape),
    size: z.string(),
    allow_partial: z.boolean(),
  })
  .meta({id: 'JobParameters'});

export type JobParameters = z.infer<typeof JobParametersSchema>;

export const WarningSchema = z
  .object({
    code: z.enum(WARNING_CODES),
    message: z.string(),
    requested_model: z.string(),
    shutdown_date: z.string().nullable(),
    model: z.string(),
    field: z.string().optional(),
  })
  .meta({
    id: 'Warning',
    description: 'How the request was run differently from how it was sent; never a failure.',
  });

export const JobErrorSchema = z
  .object({code: z.enum(ERROR_CODES), message: z.string()})
  .meta({id: 'JobError', description: 'Why a failed job made nothing.'});

export type JobError = z.infer<typeof JobErrorSchema>;

/** One input of an edit, as the job keeps it: never the bytes, only where they came from. */
export interface SourceImage {
  role: 'image' | 'mask' | 'markup';
  /** An image of this service; null for other sources. */
  image_id: string | null;
  /** gs://bucket/path for an object in Cloud Storage; null for other sources. */
  gcs_uri: string | null;
  sha256: string;
}

export const SourceImageSchema = z
  .object({
    role: z.enum(['image', 'mask', 'markup']),
    image_id: z.string().nullable(),
    gcs_uri: z.string().nullable(),
    sha256: z.string(),
  })
  .meta({
    id: 'SourceImage',
    description: 'An input of an edit: an image of this service, a gs:// object, or an upload.',
  });

export interface JobRecord {
  id: string;
  status: JobStatus;
  /** Who made it: the API key's name, or the IAM caller's email; null when unknown. */
  owner: string | null;
  /** Kept once per job, never per image (records stay small). */
  prompt: string;
  source: 'legacy' | 'generate' | 'edit';
  /** An edit's inputs, in order: where each came from and its sha256. Empty for a generation. */
  source_images: SourceImage[];
  parameters: JobParameters;
  metadata: Record<string, string>;
  usage: Usage;
  /** Kept in the job as well as under their own ids, so a job is one read. */
  images: ImageRecord[];
  failures: JobFailure[];
  warnings: GenerationWarning[];
  /** Set when `failed`. */
  error: JobError | null;
  /**
   * While `running`: until when the run that wrote it may still complete it.
   * After that the reconciler completes or removes what it left.
   */
  lease_until: string | null;
  created_at: string;
  updated_at: string;
  completed_at: string | null;
  /** Milliseconds spent waiting on the image provider. */
  upstream_ms: number;
}
