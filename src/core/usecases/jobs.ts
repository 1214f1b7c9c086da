import {AppError, notFound, storageCall, validationError} from '../errors';
import type {JobCursor, MetadataStore, ObjectStore} from '../ports';
import type {JobRecord, JobStatus} from '../records';
import {isId, jobPrefix} from '../ids';
import {mayAccess, visibleOwner, type Requester} from '../requester';

export interface JobDeps {
  objects: ObjectStore;
  metadata: MetadataStore;
  now?: () => Date;
}

/** The job, if the requester may see it: another caller's job is as not found as a missing one. */
export async function findJob(deps: JobDeps, requester: Requester, id: string): Promise<JobRecord> {
  if (!isId(id)) throw notFound('job', id);
  const job = await storageCall('Could not read the job record', deps.metadata.getJob(id));
  if (!job || !mayAccess(requester, job.owner)) throw notFound('job', id);
  return job;
}

export interface ListJobsInput {
  limit: number;
  cursor?: string;
  status?: JobStatus;
  source?: JobRecord['source'];
  metadata?: {key: string; value: string};
}

export function encodeCursor(cursor: JobCursor): string {
  return Buffer.from(JSON.stringify([cursor.createdAt, cursor.id])).toString('base64url');
}

function decodeCursor(value: string): JobCursor {
  try {
    const decoded: unknown = JSON.parse(Buffer.from(value, 'base64url').toString('utf8'));
    if (
      Array.isArray(decoded) &&
      decoded.length === 2 &&
      typeof decoded[0] === 'string' &&
      !Number.isNaN(Date.parse(decoded[0])) &&
      typeof decoded[1] === 'string' &&
      isId(decoded[1])
    ) {
      return {createdAt: decoded[0], id: decoded[1]};
    }
  } catch {
    // fall through to the error below
  }
  throw validationError([{field: 'cursor', message: 'not a cursor this service returned'}]);
}

/** The requester's jobs (everyone's for an admin or behind IAM), newest first. */
export async function listJobs(
  deps: JobDeps,
  requester: Requester,
  input: ListJobsInput,
): Promise<{jobs: JobRecord[]; nextCursor: string | null}> {
  const owner = visibleOwner(requester);
  const page = await storageCall(
    'Could not list jobs',
    deps.metadata.listJobs({
      limit: input.limit,
      ...(owner !== undefined ? {owner} : {}),
      ...(input.cursor ? {after: decodeCursor(input.cursor)} : {}),
      ...(input.status ? {status: input.status} : {}),
      ...(input.source ? {source: input.source} : {}),
      ...(input.metadata ? {metadata: input.metadata} : {}),
    }),
  );
  return {jobs: page.jobs, nextCursor: page.next ? encodeCursor(page.next) : null};
}

/**
 * Image by image, object then record (see deleteImage), then the job. If a
 * step fails, the images already deleted are gone whole and the rest are
 * untouched, so the job still lists exactly the images that exist, and a
 * retry carries on where this one stopped.
 */
export async function deleteJob(deps: JobDeps, requester: Requester, id: string): Promise<JobRecord> {
  const job = await findJob(deps, requester, id);
  if (job.status === 'running') {
    throw new AppError('JOB_RUNNING', `Job ${job.id} is still running; delete it once it has finished`, {
      retryAfterSeconds: 30,
    });
  }
  if (job.status === 'failed') {
    // A failed run may have left objects behind (the reconciler removes them too).
    const left = await storageCall(
      'Could not list the objects of the job',
      deps.objects.list(jobPrefix(job.id)),
    );
    for (const object of left) {
      await storageCall('Could not delete an image of the job', deps.objects.delete(object.path));
    }
  }
  const now = (deps.now ?? (() => new Date()))().toISOString();
  // One at a time: each image's record update touches the same job record.
  for (const image of job.images) {
    await storageCall('Could not delete an image of the job', deps.objects.delete(image.object_path));
    await storageCall(
      'Could not delete an image record of the job',
      deps.metadata.deleteImage(image.id, now),
    );
  }
  const removed = await storageCall('Could not delete the job record', deps.metadata.deleteJob(id));
  if (!removed) throw notFound('job', id);
  return job;
}
