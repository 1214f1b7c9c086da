import {randomUUID} from 'node:crypto';
import {text} from 'node:stream/consumers';
import {deleteImage, findImage, openImage} from '../../src/core/usecases/images';
import {deleteJob, findJob, listJobs, type JobDeps} from '../../src/core/usecases/jobs';
import type {Requester} from '../../src/core/requester';
import {MemoryMetadataStore, MemoryObjectStore} from '../support/memory-stores';
import {finishedJob, runningJob} from '../support/records';

/** Behind IAM every job is visible. */
const ANYONE: Requester = {kind: 'iam', email: null};

async function setUp(jobCount = 0) {
  const objects = new MemoryObjectStore();
  const metadata = new MemoryMetadataStore();
  const deps: JobDeps = {objects, metadata, now: () => new Date('2031-01-01T00:00:00Z')};
  const jobs = [];
  for (let i = 0; i < jobCount; i++) {
    const job = finishedJob({created_at: new Date(Date.UTC(2030, 0, 1, 0, 0, i)).toISOString()}, 2);
    for (const image of job.images) {
      await objects.put(image.object_path, Buffer.from(image.id), {contentType: 'image/png', metadata: {}});
    }
    await metadata.createJob(runningJob(job));
    await metadata.completeJob(job);
    jobs.push(job);
  }
  return {objects, metadata, deps, jobs};
}

describe('jobs', () => {
  test('listJobs pages newest first with an opaque cursor', async () => {
    const {deps, jobs} = await setUp(5);
    const first = await listJobs(deps, ANYONE, {limit: 2});
    const second = await listJobs(deps, ANYONE, {limit: 2, cursor: first.nextCursor!});
    const third = await listJobs(deps, ANYONE, {limit: 2, cursor: second.nextCursor!});
    const seen = [...first.jobs, ...second.jobs, ...third.jobs].map(job => job.id);
    expect(seen).toEqual(jobs.map(job => job.id).reverse());
    expect(third.nextCursor).toBeNull();
  });

  test('a cursor this service did not make is a validation error naming the cursor', async () => {
    const {deps} = await setUp();
    await expect(listJobs(deps, ANYONE, {limit: 2, cursor: 'bm90IGEgY3Vyc29y'})).rejects.toMatchObject({
      code: 'VALIDATION_ERROR',
      details: {fields: [{field: 'cursor', message: 'not a cursor this service returned'}]},
    });
  });

  test('an id that is not one of ours is not found, without asking the store', async () => {
    const {deps, metadata} = await setUp();
    metadata.getJob = async () => {
      throw new Error('must not be called');
    };
    await expect(findJob(deps, ANYONE, '../etc')).rejects.toMatchObject({code: 'JOB_NOT_FOUND'});
  });

  test('deleteJob removes every object and record', async () => {
    const {deps, objects, metadata, jobs} = await setUp(1);
    const job = jobs[0]!;
    expect((await deleteJob(deps, ANYONE, job.id)).id).toBe(job.id);
    expect(objects.objects.size).toBe(0);
    expect(metadata.jobs.size).toBe(0);
    expect(metadata.imageJobs.size).toBe(0);
  });

  test('a delete that fails half-way leaves the job listing exactly the images that still exist', async () => {
    const {deps, objects, jobs} = await setUp(1);
    const job = jobs[0]!;
    const remove = objects.delete.bind(objects);
    let deletes = 0;
    objects.delete = async path => {
      if (++deletes === 2) throw new Error('bucket unavailable');
      return remove(path);
    };
    await expect(deleteJob(deps, ANYONE, job.id)).rejects.toMatchObject({code: 'STORAGE_ERROR'});
    const left = await findJob(deps, ANYONE, job.id);
    expect(left.images.map(image => image.id)).toEqual([job.images[1]!.id]);
    expect([...objects.objects.keys()]).toEqual([job.images[1]!.object_path]);
    // The retry finishes it.
    objects.delete = remove;
    await deleteJob(deps, ANYONE, job.id);
    expect(objects.objects.size).toBe(0);
  });
});

describe('who may see and touch what', () => {
  const carol: Requester = {kind: 'api-key', name: 'carol', admin: false, dailyQuota: null};
  const bob: Requester = {kind: 'api-key', name: 'bob', admin: false, dailyQuota: null};
  const admin: Requester = {kind: 'api-key', name: 'ops', admin: true, dailyQuota: null};

  async function carolsJob() {
    const {deps, metadata} = await setUp();
    const job = finishedJob({owner: 'carol'}, 1);
    await metadata.createJob(runningJob(job));
    await metadata.completeJob(job);
    return {deps, job};
  }

  test("another caller's job and images are not found, as if they did not exist", async () => {
    const {deps, job} = await carolsJob();
    await expect(findJob(deps, bob, job.id)).rejects.toMatchObject({code: 'JOB_NOT_FOUND'});
    await expect(findImage(deps, bob, job.images[0]!.id)).rejects.toMatchObject({code: 'IMAGE_NOT_FOUND'});
    await expect(deleteJob(deps, bob, job.id)).rejects.toMatchObject({code: 'JOB_NOT_FOUND'});
    await expect(deleteImage(deps, bob, job.images[0]!.id)).rejects.toMatchObject({code: 'IMAGE_NOT_FOUND'});
    expect((await listJobs(deps, bob, {limit: 10})).jobs).toEqual([]);
    expect((await findJob(deps, carol, job.id)).id).toBe(job.id);
    expect((await listJobs(deps, carol, {limit: 10})).jobs.map(j => j.id)).toEqual([job.id]);
  });

  test("an admin key sees and deletes every caller's jobs", async () => {
    const {deps, job} = await carolsJob();
    expect((await listJobs(deps, admin, {limit: 10})).jobs.map(j => j.id)).toEqual([job.id]);
    expect((await deleteJob(deps, admin, job.id)).id).toBe(job.id);
  });

  test('a signed URL opens the one image it was signed for', async () => {
    const {deps, job} = await carolsJob();
    const image = job.images[0]!;
    expect(
      (await findImage(deps, {kind: 'signed-url', imageId: image.id, jobId: null}, image.id)).image,
    ).toEqual(image);
    await expect(
      findImage(deps, {kind: 'signed-url', imageId: randomUUID(), jobId: null}, image.id),
    ).rejects.toMatchObject({
      code: 'IMAGE_NOT_FOUND',
    });
  });

  test('a running job cannot be deleted', async () => {
    const {deps, metadata} = await setUp();
    const job = runningJob(finishedJob());
    await metadata.createJob(job);
    await expect(deleteJob(deps, ANYONE, job.id)).rejects.toMatchObject({code: 'JOB_RUNNING'});
  });
});

describe('images', () => {
  test('an image is found by id and its bytes opened', async () => {
    const {deps, jobs} = await setUp(1);
    const image = jobs[0]!.images[1]!;
    expect(await findImage(deps, ANYONE, image.id)).toEqual({image, job: jobs[0]});
    expect(await text(await openImage(deps, image))).toBe(image.id);
  });

  test('deleteImage removes the object and the record and drops it from its job', async () => {
    const {deps, objects, jobs} = await setUp(1);
    const [kept, removed] = jobs[0]!.images;
    await deleteImage(deps, ANYONE, removed!.id);
    expect(objects.objects.has(removed!.object_path)).toBe(false);
    await expect(findImage(deps, ANYONE, removed!.id)).rejects.toMatchObject({code: 'IMAGE_NOT_FOUND'});
    const job = await findJob(deps, ANYONE, jobs[0]!.id);
    expect(job.images).toEqual([kept]);
    expect(job.updated_at).toBe('2031-01-01T00:00:00.000Z');
  });

  test('an image whose object is gone reads as not found', async () => {
    const {deps, objects, jobs} = await setUp(1);
    const image = jobs[0]!.images[0]!;
    await objects.delete(image.object_path);
    await expect(openImage(deps, image)).rejects.toMatchObject({code: 'IMAGE_NOT_FOUND'});
    await expect(findImage(deps, ANYONE, randomUUID())).rejects.toMatchObject({code: 'IMAGE_NOT_FOUND'});
  });
});
