import type {Readable} from 'node:stream';
import {notFound, storageCall} from '../errors';
import {isId} from '../ids';
import type {ImageRecord, JobRecord} from '../records';
import {mayAccess, type Requester} from '../requester';
import type {JobDeps} from './jobs';

/** The image and its job, if the requester may see them (another caller's is as not found as a missing one). */
export async function findImage(
  deps: JobDeps,
  requester: Requester,
  id: string,
): Promise<{image: ImageRecord; job: JobRecord}> {
  if (!isId(id) || (requester.kind === 'signed-url' && requester.imageId !== id)) throw notFound('image', id);
  const image = await storageCall('Could not read the image record', deps.metadata.getImage(id));
  if (!image) throw notFound('image', id);
  const job = await storageCall('Could not read the job record', deps.metadata.getJob(image.job_id));
  if (!job || !mayAccess(requester, job.owner)) throw notFound('image', id);
  return {image, job};
}

export async function openImage(deps: JobDeps, image: ImageRecord): Promise<Readable> {
  const stream = await storageCall('Could not read the image', deps.objects.read(image.object_path));
  if (!stream) throw notFound('image', image.id);
  return stream;
}

/**
 * Deletes the object first, then the record. If the second step fails the
 * record is left pointing at nothing, which reads as "not found" and is
 * removed by the caller's retry; the other order could strand an object that
 * no record points to and no retry can find.
 */
export async function deleteImage(deps: JobDeps, requester: Requester, id: string): Promise<ImageRecord> {
  const {image} = await findImage(deps, requester, id);
  await storageCall('Could not delete the image', deps.objects.delete(image.object_path));
  const now = (deps.now ?? (() => new Date()))().toISOString();
  const removed = await storageCall('Could not delete the image record', deps.metadata.deleteImage(id, now));
  if (!removed) throw notFound('image', id);
  return removed;
}
