import type {Readable} from 'node:stream';
import {notFound, storageCall} from '../errors';
import {imageIdOfObjectPath, isId, jobPrefix} from '../ids';
import type {ObjectInfo} from '../ports';
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

/**
 * The image to serve, if the requester may see it. `jobId` is the job a link
 * names (a signed URL's is the one it was signed with). An image is stored
 * before its job is completed, and its record is written only then, with all
 * the job's images at once; meanwhile a stream has already linked it. So an
 * image without a record is looked for among the objects of the job the link
 * names, if that job is still running and the requester may see it: the
 * object carries what its record will hold. Once the job has failed, its
 * objects are gone, and so is the image.
 */
export async function findImageToServe(
  deps: JobDeps,
  requester: Requester,
  id: string,
  jobId: string | undefined,
): Promise<ImageRecord> {
  const named = requester.kind === 'signed-url' ? (requester.jobId ?? undefined) : jobId;
  if (!isId(id) || (requester.kind === 'signed-url' && requester.imageId !== id)) throw notFound('image', id);
  const recorded = await storageCall('Could not read the image record', deps.metadata.getImage(id));
  if (recorded) {
    // A link names the image's own job, or none.
    if (named !== undefined && recorded.job_id !== named) throw notFound('image', id);
    const job = await storageCall('Could not read the job record', deps.metadata.getJob(recorded.job_id));
    if (!job || !mayAccess(requester, job.owner)) throw notFound('image', id);
    return recorded;
  }
  if (named === undefined || !isId(named)) throw notFound('image', id);
  const job = await storageCall('Could not read the job record', deps.metadata.getJob(named));
  if (!job || !mayAccess(requester, job.owner)) throw notFound('image', id);
  // Completed since the image record was looked for: the job holds it.
  const kept = job.images.find(image => image.id === id);
  if (kept) return kept;
  if (job.status !== 'running') throw notFound('image', id);
  const objects = await storageCall('Could not list the images', deps.objects.list(jobPrefix(job.id)));
  const object = objects.find(candidate => imageIdOfObjectPath(candidate.path) === id);
  const image = object ? imageOfObject(job.id, object) : null;
  if (!image || image.id !== id) throw notFound('image', id);
  return image;
}

/**
 * The record of an image of `jobId`, rebuilt from what its object was written
 * with (see generate); null when the object does not carry it. The requested
 * size and the revised prompt are not kept there: the size is the image's own.
 */
export function imageOfObject(jobId: string, object: ObjectInfo): ImageRecord | null {
  const m = object.metadata;
  const index = Number(m.index);
  const width = Number(m.width);
  const height = Number(m.height);
  if (m.job_id !== jobId || !m.image_id || !m.sha256 || !m.model) return null;
  if (!Number.isInteger(index) || !(width > 0) || !(height > 0)) return null;
  return {
    id: m.image_id,
    job_id: jobId,
    index,
    object_path: object.path,
    content_type: object.contentType,
    bytes: object.bytes,
    sha256: m.sha256,
    width,
    height,
    model: m.model,
    size: `${width}x${height}`,
    revised_prompt: null,
    created_at: object.createdAt.toISOString(),
  };
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
