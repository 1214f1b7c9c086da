import {randomUUID} from 'node:crypto';
import {UPSTREAM_PARAMETER_NAMES} from '../../src/core/generation';
import type {ImageRecord, JobParameters, JobRecord} from '../../src/core/records';

/** A job's stored parameters: every upstream parameter null unless given, as the generate use case keeps them. */
export function storedParameters(given: Partial<JobParameters> = {}): JobParameters {
  return {
    count: 1,
    requested_model: 'gpt-image-2.6-sunburst',
    model: 'gpt-image-2.6-sunburst',
    ...(Object.fromEntries(UPSTREAM_PARAMETER_NAMES.map(name => [name, null])) as Record<string, null>),
    size: '1024x1024',
    allow_partial: false,
    ...given,
  } as JobParameters;
}

/** A completed job as the generate use case would write it, for store tests. */
export function finishedJob(overrides: Partial<JobRecord> = {}, imageCount = 2): JobRecord {
  const id = overrides.id ?? randomUUID();
  const createdAt = overrides.created_at ?? new Date().toISOString();
  const images: ImageRecord[] = Array.from({length: imageCount}, (_, index) => {
    const imageId = randomUUID();
    return {
      id: imageId,
      job_id: id,
      index,
      object_path: `images/${id}/${String(index).padStart(3, '0')}-${imageId}.png`,
      content_type: 'image/png',
      bytes: 100 + index,
      sha256: 'a'.repeat(64),
      width: 1024,
      height: 1024,
      model: 'gpt-image-2.6-sunburst',
      size: '1024x1024',
      revised_prompt: null,
      created_at: createdAt,
    };
  });
  return {
    id,
    status: 'completed',
    owner: null,
    prompt: 'a test prompt',
    source: 'generate',
    source_images: [],
    parameters: storedParameters({count: imageCount}),
    metadata: {},
    usage: {
      total_tokens: 10,
      input_tokens: 4,
      output_tokens: 6,
      input_tokens_details: {text_tokens: 4, image_tokens: 0},
    },
    images,
    failures: [],
    warnings: [],
    error: null,
    lease_until: null,
    created_at: createdAt,
    updated_at: createdAt,
    completed_at: createdAt,
    upstream_ms: 5,
    ...overrides,
  };
}

/** The `running` record a run writes before its upstream calls, for the job it will complete as `job`. */
export function runningJob(job: JobRecord, leaseUntil?: string): JobRecord {
  return {
    ...job,
    status: 'running',
    usage: null,
    images: [],
    failures: [],
    error: null,
    lease_until: leaseUntil ?? new Date(Date.parse(job.created_at) + 360_000).toISOString(),
    updated_at: job.created_at,
    completed_at: null,
    upstream_ms: 0,
  };
}
