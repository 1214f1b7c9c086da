import {randomUUID} from 'node:crypto';
import type {ImageRecord, JobRecord} from '../../src/core/records';

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
    parameters: {
      count: imageCount,
      requested_model: 'gpt-image-2.6-sunburst',
      model: 'gpt-image-2.6-sunburst',
      size: '1024x1024',
      quality: null,
      style: null,
      background: null,
      output_format: null,
      output_compression: null,
      moderation: null,
      complexity: null,
      safety_identifier: null,
      frame_count: null,
      frame_duration_ms: null,
      svg: null,
      input_fidelity: null,
      allow_partial: false,
    },
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
