import type {ModelId} from './models';

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
  model: ModelId;
  size: string;
  prompt: string;
  revised_prompt: string | null;
  created_at: string;
}

/** `partial`: some upstream calls failed and `allow_partial` was set; see `failures`. */
export type JobStatus = 'completed' | 'partial';

/** An upstream call of a partial job that produced no images. */
export interface JobFailure {
  first_index: number;
  count: number;
  code: string;
  error: string;
}

/** The parameters a job was run with, in the request's own vocabulary. */
export interface JobParameters {
  count: number;
  model: ModelId;
  size: string;
  quality: string | null;
  style: string | null;
  background: string | null;
  output_format: string | null;
  output_compression: number | null;
  moderation: string | null;
  user: string | null;
  allow_partial: boolean;
}

export interface JobRecord {
  id: string;
  status: JobStatus;
  prompt: string;
  source: 'legacy' | 'generate';
  parameters: JobParameters;
  metadata: Record<string, string>;
  usage: Usage;
  /** Kept in the job as well as under their own ids, so a job is one read. */
  images: ImageRecord[];
  failures: JobFailure[];
  created_at: string;
  updated_at: string;
  completed_at: string | null;
  /** Milliseconds spent waiting on the image provider. */
  upstream_ms: number;
}
