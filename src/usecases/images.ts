import type {Readable} from 'node:stream';
import {AppError} from '../errors';
import type {ImageRecord, JobRecord, JobStatus} from '../domain/records';
import type {ImageStore, JobCursor, MetadataStore} from '../ports';
import {storageError} from './generate';

export interface ImageDeps {
  images: ImageStore;
  metadata: MetadataStore;
  now?: () => Date;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/i;

/** Ids are UUIDs we minted; anything else is rejected before it reaches a store. */
export function isId(value: string): boolean {
  return UUID.test(value);
}

function imageNotFound(id: string): AppError {
  return new AppError('IMAGE_NOT_FOUND', `No image with id '${id.slice(0, 64)}'`);
}

function jobNotFound(id: string): AppError {
  return new AppError('JOB_NOT_FOUND', `No job with id '${id.slice(0, 64)}'`);
}

async function guard<T>(message: string, work: Promise<T>): Promise<T> {
  try {
    return await work;
  } catch (error) {
    throw storageError(message, error);
  }
}

export async function findImage(deps: ImageDeps, id: string): Promise<ImageRecord> {
  if (!isId(id)) throw imageNotFound(id);
  const image = await guard('Could not read the image record', deps.metadata.getImage(id));
  if (!image) throw imageNotFound(id);
  return image;
}

export async function openImage(deps: ImageDeps, image: ImageRecord): Promise<Readable> {
  const stream = await guard('Could not read the image', deps.images.read(image.object_path));
  if (!stream) throw imageNotFound(image.id);
  return stream;
}

export async function findJob(deps: ImageDeps, id: string): Promise<JobRecord> {
  if (!isId(id)) throw jobNotFound(id);
  const job = await guard('Could not read the job record', deps.metadata.getJob(id));
  if (!job) throw jobNotFound(id);
  return job;
}

export interface ListJobsInput {
  limit: number;
  cursor?: string;
  status?: JobStatus;
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
  throw new AppError('VALIDATION_ERROR', 'cursor: not a cursor this service returned', {
    details: {field: 'cursor'},
  });
}

export async function listJobs(
  deps: ImageDeps,
  input: ListJobsInput,
): Promise<{jobs: JobRecord[]; nextCursor: string | null}> {
  const page = await guard(
    'Could not list jobs',
    deps.metadata.listJobs({
      limit: input.limit,
      ...(input.cursor ? {after: decodeCursor(input.cursor)} : {}),
      ...(input.status ? {status: input.status} : {}),
      ...(input.metadata ? {metadata: input.metadata} : {}),
    }),
  );
  return {jobs: page.jobs, nextCursor: page.next ? encodeCursor(page.next) : null};
}

/**
 * Deletes the object first, then the record. If the second step fails the
 * record is left pointing at nothing, which reads as "not found" and is
 * removed by the caller's retry; the other order could strand an object that
 * no record points to and no retry can find.
 */
export async function deleteImage(deps: ImageDeps, id: string): Promise<ImageRecord> {
  const image = await findImage(deps, id);
  await guard('Could not delete the image', deps.images.delete(image.object_path));
  const now = (deps.now ?? (() => new Date()))().toISOString();
  const removed = await guard('Could not delete the image record', deps.metadata.deleteImage(id, now));
  if (!removed) throw imageNotFound(id);
  return removed;
}

/**
 * Image by image, object then record (see deleteImage), then the job. If a
 * step fails, the images already deleted are gone whole and the rest are
 * untouched, so the job still lists exactly the images that exist, and a
 * retry carries on where this one stopped.
 */
export async function deleteJob(deps: ImageDeps, id: string): Promise<JobRecord> {
  const job = await findJob(deps, id);
  const now = (deps.now ?? (() => new Date()))().toISOString();
  // One at a time: each image's record update touches the same job record.
  for (const image of job.images) {
    await guard('Could not delete an image of the job', deps.images.delete(image.object_path));
    await guard('Could not delete an image record of the job', deps.metadata.deleteImage(image.id, now));
  }
  const removed = await guard('Could not delete the job record', deps.metadata.deleteJob(id));
  if (!removed) throw jobNotFound(id);
  return job;
}
