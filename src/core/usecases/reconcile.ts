import {jobPrefix} from '../ids';
import type {MetadataStore, ObjectInfo, ObjectStore} from '../ports';
import type {ImageRecord, JobRecord} from '../records';
import {imageOfObject} from './images';

export interface ReconcileDeps {
  objects: ObjectStore;
  metadata: MetadataStore;
  now?: () => Date;
}

export interface ReconcileOptions {
  /**
   * How long a run may hold a job: objects younger than this may belong to a
   * run still writing, and are left alone.
   */
  leaseMs: number;
  /** At most this many jobs (and reservations) are looked at per kind and pass. */
  limit: number;
  /** `full`: also walk every object under images/ for ones no job knows (slow on a big bucket). */
  scope: 'recent' | 'full';
}

/** What one pass repaired, by kind; every repair is also logged by the caller. */
export interface ReconcileReport {
  /** Running jobs past their lease whose objects were all there: completed from them. */
  jobs_completed: string[];
  /** Running jobs past their lease that could not be completed: failed, their objects removed. */
  jobs_failed: string[];
  /**
   * Objects removed: of failed jobs, or that no finished job points to; on
   * the local disk also files that writes cut short left behind.
   */
  objects_removed: string[];
  /** Image records whose object was missing, dropped from their jobs. */
  images_dropped: string[];
  /** Quota reservations given back: their job failed or never was recorded. */
  reservations_released: string[];
  /** What could not be repaired this pass (a store failing, a job still locked), with why; the next pass tries again. */
  unrepaired: string[];
}

const STOPPED: {code: 'STORAGE_ERROR'; message: string} = {
  code: 'STORAGE_ERROR',
  message: 'The run stopped before it finished (the instance ended or a store failed); nothing was kept',
};

/**
 * Finds what runs left half-done and repairs it: running jobs past their
 * lease are completed from their objects or failed and cleaned up; objects
 * of failed jobs, and objects no finished job points to, are removed; image
 * records whose object is gone are dropped; quota reserved for jobs that
 * never finished is given back.
 *
 * Safe to run at any time, beside live traffic and beside itself: it only
 * touches jobs whose lease has ended (no run holds them), every change to a
 * job is conditional on its state (complete or fail only a running job), and
 * every removal is repeatable.
 */
export async function reconcile(deps: ReconcileDeps, options: ReconcileOptions): Promise<ReconcileReport> {
  const now = (deps.now ?? (() => new Date()))();
  const report = emptyReport();
  const settledBefore = now.getTime() - options.leaseMs;
  // One item that cannot be repaired now (a job locked by a dead instance's transaction, say)
  // must not keep the pass from the others.
  const attempt = async (item: string, repair: () => Promise<void>) => {
    try {
      await repair();
    } catch (error) {
      report.unrepaired.push(`${item}: ${error instanceof Error ? error.message : String(error)}`);
    }
  };

  for (const job of await deps.metadata.listStaleJobs(now, options.limit)) {
    await attempt(`job ${job.id}`, () => settleStaleJob(deps, job, now, report));
  }

  // Failed jobs: whatever their run stored is removed (a write may have landed after the failure).
  const failed = await deps.metadata.listJobs({limit: options.limit, status: 'failed'});
  for (const job of failed.jobs) {
    await attempt(`job ${job.id}`, async () => {
      await removeAll(deps, await deps.objects.list(jobPrefix(job.id)), report);
      await removeAbandonedWrites(deps, jobPrefix(job.id), settledBefore, report);
    });
  }

  // Finished jobs: every image record has its object, and every object old enough has a record.
  for (const status of ['completed', 'partial'] as const) {
    const finished = await deps.metadata.listJobs({limit: options.limit, status});
    for (const job of finished.jobs) {
      await attempt(`job ${job.id}`, () => checkFinishedJob(deps, job, now, settledBefore, report));
    }
  }

  for (const reservation of await deps.metadata.listQuotaReservations(
    new Date(settledBefore),
    options.limit,
  )) {
    await attempt(`reservation ${reservation.jobId}`, async () => {
      const job = await deps.metadata.getJob(reservation.jobId);
      if (job === null || job.status === 'failed') {
        await deps.metadata.releaseQuota(reservation);
        report.reservations_released.push(reservation.jobId);
      }
    });
  }

  if (options.scope === 'full') await attempt('orphans', () => removeOrphans(deps, settledBefore, report));
  return report;
}

function emptyReport(): ReconcileReport {
  return {
    jobs_completed: [],
    jobs_failed: [],
    objects_removed: [],
    images_dropped: [],
    reservations_released: [],
    unrepaired: [],
  };
}

/**
 * Settles one job whose run stopped (running, its lease over), as a pass
 * would: a retry of its Idempotency-Key does this before running again, so
 * what the stopped run already made and stored is kept and replayed rather
 * than paid for twice.
 */
export async function settleStoppedJob(deps: ReconcileDeps, jobId: string): Promise<void> {
  const now = (deps.now ?? (() => new Date()))();
  const job = await deps.metadata.getJob(jobId);
  if (job?.status !== 'running' || job.lease_until === null || Date.parse(job.lease_until) > now.getTime())
    return;
  const report = emptyReport();
  await settleStaleJob(deps, job, now, report);
}

/** A running job whose run stopped: complete it from its objects if they are all there, else fail it. */
async function settleStaleJob(deps: ReconcileDeps, job: JobRecord, now: Date, report: ReconcileReport) {
  const objects = await deps.objects.list(jobPrefix(job.id));
  const images = imagesFrom(job, objects);
  if (images) {
    const completedAt = now.toISOString();
    const completed: JobRecord = {
      ...job,
      status: 'completed',
      images,
      lease_until: null,
      updated_at: completedAt,
      completed_at: completedAt,
    };
    if (await deps.metadata.completeJob(completed)) report.jobs_completed.push(job.id);
    return;
  }
  const failed = await deps.metadata.failJob(job.id, STOPPED, now.toISOString());
  // If it was not running any more, it was settled meanwhile: remove its objects only if it failed.
  const state = failed ? 'failed' : (await deps.metadata.getJob(job.id))?.status;
  if (failed) report.jobs_failed.push(job.id);
  if (state === 'failed') await removeAll(deps, objects, report);
}

/**
 * The job's image records, rebuilt from what each object was written with,
 * when every image the job asked for is there; otherwise null.
 */
function imagesFrom(job: JobRecord, objects: ObjectInfo[]): ImageRecord[] | null {
  const byIndex = new Map<number, ImageRecord>();
  for (const object of objects) {
    const image = imageOfObject(job.id, object);
    if (image && !byIndex.has(image.index)) byIndex.set(image.index, image);
  }
  const count = job.parameters.count;
  if (byIndex.size !== count) return null;
  const images = [...byIndex.values()].sort((a, b) => a.index - b.index);
  return images.every((image, i) => image.index === i) ? images : null;
}

async function checkFinishedJob(
  deps: ReconcileDeps,
  job: JobRecord,
  now: Date,
  settledBefore: number,
  report: ReconcileReport,
) {
  const objects = await deps.objects.list(jobPrefix(job.id));
  const present = new Set(objects.map(object => object.path));
  for (const image of job.images) {
    if (present.has(image.object_path)) continue;
    if ((await deps.metadata.deleteImage(image.id, now.toISOString())) !== null) {
      report.images_dropped.push(image.id);
    }
  }
  const recorded = new Set(job.images.map(image => image.object_path));
  const strays = objects.filter(
    object => !recorded.has(object.path) && object.createdAt.getTime() < settledBefore,
  );
  await removeAll(deps, strays, report);
  await removeAbandonedWrites(deps, jobPrefix(job.id), settledBefore, report);
}

/** Objects under images/ whose job id no record knows, old enough that no run is still writing them. */
async function removeOrphans(deps: ReconcileDeps, settledBefore: number, report: ReconcileReport) {
  const byJob = new Map<string, ObjectInfo[]>();
  for (const object of await deps.objects.list('images/')) {
    const jobId = object.path.split('/')[1];
    if (jobId) byJob.set(jobId, [...(byJob.get(jobId) ?? []), object]);
  }
  for (const [jobId, objects] of byJob) {
    if ((await deps.metadata.getJob(jobId)) !== null) continue;
    await removeAll(
      deps,
      objects.filter(object => object.createdAt.getTime() < settledBefore),
      report,
    );
  }
  await removeAbandonedWrites(deps, 'images/', settledBefore, report);
}

/** What writes cut short left under the prefix (local disk), once no run can still be writing there. */
async function removeAbandonedWrites(
  deps: ReconcileDeps,
  prefix: string,
  settledBefore: number,
  report: ReconcileReport,
) {
  const removed = await deps.objects.removeAbandonedWrites?.(prefix, new Date(settledBefore));
  if (removed) report.objects_removed.push(...removed);
}

async function removeAll(deps: ReconcileDeps, objects: ObjectInfo[], report: ReconcileReport) {
  for (const object of objects) {
    if (await deps.objects.delete(object.path)) report.objects_removed.push(object.path);
  }
}
