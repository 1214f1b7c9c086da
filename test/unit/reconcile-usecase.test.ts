import {randomUUID} from 'node:crypto';
import type {QuotaReservation} from '../../src/core/ports';
import type {JobRecord} from '../../src/core/records';
import {reconcile, type ReconcileDeps} from '../../src/core/usecases/reconcile';
import {MemoryMetadataStore, MemoryObjectStore} from '../support/memory-stores';
import {finishedJob, runningJob} from '../support/records';

const LEASE_MS = 6 * 60_000;
const NOW = new Date('2031-03-01T12:00:00.000Z');
const LONG_AGO = '2031-03-01T10:00:00.000Z';

function setUp() {
  const objects = new MemoryObjectStore();
  const metadata = new MemoryMetadataStore();
  const deps: ReconcileDeps = {objects, metadata, now: () => NOW};
  const run = (scope: 'recent' | 'full' = 'recent') =>
    reconcile(deps, {leaseMs: LEASE_MS, limit: 100, scope});
  return {objects, metadata, deps, run};
}

/** Writes the objects of `job` as a run does, with the metadata the reconciler rebuilds records from. */
async function writeObjects(objects: MemoryObjectStore, job: JobRecord, created = new Date(LONG_AGO)) {
  for (const image of job.images) {
    await objects.put(image.object_path, Buffer.from(image.id), {
      contentType: image.content_type,
      metadata: {
        sha256: image.sha256,
        job_id: job.id,
        image_id: image.id,
        index: String(image.index),
        model: image.model,
        width: String(image.width),
        height: String(image.height),
      },
    });
    objects.objects.get(image.object_path)!.info.createdAt = created;
  }
}

/** A run that stopped after writing its running record (and maybe its objects): its lease has ended. */
function stoppedRun(imageCount = 2): {final: JobRecord; running: JobRecord} {
  const final = finishedJob({created_at: LONG_AGO}, imageCount);
  return {final, running: runningJob(final, '2031-03-01T10:06:00.000Z')};
}

describe('reconcile', () => {
  test('a stopped run whose objects are all there is completed from them', async () => {
    const {objects, metadata, run} = setUp();
    const {final, running} = stoppedRun(2);
    await metadata.createJob(running);
    await writeObjects(objects, final);
    const report = await run();
    expect(report.jobs_completed).toEqual([final.id]);
    const job = (await metadata.getJob(final.id))!;
    expect(job.status).toBe('completed');
    expect(job.lease_until).toBeNull();
    expect(job.images.map(image => [image.id, image.index, image.sha256, image.object_path])).toEqual(
      final.images.map(image => [image.id, image.index, image.sha256, image.object_path]),
    );
    for (const image of final.images)
      expect(await metadata.getImage(image.id)).toMatchObject({job_id: final.id});
  });

  test('a stopped run with objects missing is failed, and what it wrote is removed', async () => {
    const {objects, metadata, run} = setUp();
    const {final, running} = stoppedRun(3);
    await metadata.createJob(running);
    await writeObjects(objects, {...final, images: final.images.slice(0, 2)});
    const report = await run();
    expect(report.jobs_failed).toEqual([final.id]);
    expect(report.objects_removed).toHaveLength(2);
    expect(objects.objects.size).toBe(0);
    expect(await metadata.getJob(final.id)).toMatchObject({status: 'failed', error: {code: 'STORAGE_ERROR'}});
  });

  test('one item that cannot be repaired is reported, and the pass goes on with the others', async () => {
    const {objects, metadata, run} = setUp();
    const locked = stoppedRun(1);
    const other = stoppedRun(1);
    for (const {final, running} of [locked, other]) {
      await metadata.createJob(running);
      await writeObjects(objects, final);
    }
    const completeJob = metadata.completeJob.bind(metadata);
    metadata.completeJob = async job => {
      if (job.id === locked.final.id) throw new Error('the job is locked');
      return completeJob(job);
    };
    const report = await run();
    expect(report.jobs_completed).toEqual([other.final.id]);
    expect(report.unrepaired).toEqual([`job ${locked.final.id}: the job is locked`]);
    expect((await metadata.getJob(locked.final.id))?.status).toBe('running');
    // The next pass, with the store answering again, repairs it.
    metadata.completeJob = completeJob;
    expect((await run()).jobs_completed).toEqual([locked.final.id]);
  });

  test('a run still within its lease is left alone', async () => {
    const {objects, metadata, run} = setUp();
    const final = finishedJob({created_at: NOW.toISOString()}, 1);
    await metadata.createJob(runningJob(final, new Date(NOW.getTime() + 60_000).toISOString()));
    await writeObjects(objects, {...final, images: []});
    const report = await run();
    expect(report).toEqual({
      jobs_completed: [],
      jobs_failed: [],
      objects_removed: [],
      images_dropped: [],
      reservations_released: [],
      unrepaired: [],
    });
    expect((await metadata.getJob(final.id))?.status).toBe('running');
  });

  test('objects a failed job left are removed', async () => {
    const {objects, metadata, run} = setUp();
    const {final, running} = stoppedRun(1);
    await metadata.createJob(running);
    await metadata.failJob(final.id, {code: 'UPSTREAM_ERROR', message: 'x'}, LONG_AGO);
    await writeObjects(objects, final);
    expect((await run()).objects_removed).toEqual([final.images[0]!.object_path]);
    expect(objects.objects.size).toBe(0);
  });

  test("a finished job's records whose objects are gone are dropped; stray objects are removed", async () => {
    const {objects, metadata, run} = setUp();
    const final = finishedJob({created_at: LONG_AGO}, 2);
    await metadata.createJob(runningJob(final));
    await metadata.completeJob(final);
    await writeObjects(objects, {...final, images: final.images.slice(1)});
    const stray = `images/${final.id}/009-${randomUUID()}.png`;
    await objects.put(stray, Buffer.from('stray'), {contentType: 'image/png', metadata: {}});
    objects.objects.get(stray)!.info.createdAt = new Date(LONG_AGO);
    const report = await run();
    expect(report.images_dropped).toEqual([final.images[0]!.id]);
    expect(report.objects_removed).toEqual([stray]);
    expect((await metadata.getJob(final.id))?.images).toEqual([final.images[1]]);
  });

  test('a young stray object may belong to a write in progress, and stays', async () => {
    const {objects, metadata, run} = setUp();
    const final = finishedJob({created_at: LONG_AGO}, 1);
    await metadata.createJob(runningJob(final));
    await metadata.completeJob(final);
    await writeObjects(objects, final);
    const young = `images/${final.id}/001-${randomUUID()}.png`;
    await objects.put(young, Buffer.from('young'), {contentType: 'image/png', metadata: {}});
    objects.objects.get(young)!.info.createdAt = NOW;
    expect((await run()).objects_removed).toEqual([]);
  });

  test('quota reserved for a job that failed or never was is given back; a running one keeps it', async () => {
    const {metadata, run} = setUp();
    const reservation = (jobId: string): QuotaReservation => ({
      subject: 'carol',
      day: '2031-03-01',
      jobId,
      amount: 2,
      createdAt: LONG_AGO,
    });
    const {final: failed, running: failedRun} = stoppedRun(1);
    await metadata.createJob(failedRun);
    await metadata.failJob(failed.id, {code: 'UPSTREAM_ERROR', message: 'x'}, LONG_AGO);
    const live = finishedJob({created_at: NOW.toISOString()}, 1);
    await metadata.createJob(runningJob(live, new Date(NOW.getTime() + 60_000).toISOString()));
    const never = randomUUID();
    for (const jobId of [failed.id, live.id, never]) await metadata.reserveQuota(reservation(jobId), 10);
    const report = await run();
    expect(report.reservations_released.sort()).toEqual([failed.id, never].sort());
    expect(metadata.quotas.get('carol/2031-03-01')).toBe(2);
  });

  test('a full pass removes old objects of jobs no record knows', async () => {
    const {objects, run} = setUp();
    const orphan = finishedJob({created_at: LONG_AGO}, 1);
    await writeObjects(objects, orphan);
    expect((await run('recent')).objects_removed).toEqual([]);
    expect((await run('full')).objects_removed).toEqual([orphan.images[0]!.object_path]);
  });

  test('two passes at once repair each thing once', async () => {
    const {objects, metadata, deps} = setUp();
    const runs = [stoppedRun(1), stoppedRun(2)];
    await metadata.createJob(runs[0]!.running);
    await writeObjects(objects, runs[0]!.final);
    await metadata.createJob(runs[1]!.running);
    const [a, b] = await Promise.all([
      reconcile(deps, {leaseMs: LEASE_MS, limit: 100, scope: 'recent'}),
      reconcile(deps, {leaseMs: LEASE_MS, limit: 100, scope: 'recent'}),
    ]);
    expect([...a.jobs_completed, ...b.jobs_completed]).toEqual([runs[0]!.final.id]);
    expect([...a.jobs_failed, ...b.jobs_failed]).toEqual([runs[1]!.final.id]);
    expect((await metadata.getJob(runs[0]!.final.id))?.status).toBe('completed');
    expect(objects.objects.size).toBe(1);
  });
});
