import {Readable} from 'node:stream';
import {compareNewestFirst, matchesQuery} from '../../src/core/job-order';
import type {
  ClaimOutcome,
  IdempotencyRecord,
  JobPage,
  JobQuery,
  MetadataStore,
  ObjectInfo,
  ObjectStore,
  QuotaReservation,
} from '../../src/core/ports';
import type {ImageRecord, JobError, JobRecord} from '../../src/core/records';
import {decideClaim, keyJobState} from '../../src/core/usecases/idempotency';

/** Records are copied in and out, as a real store serializes them. */
const copy = <T>(value: T): T => structuredClone(value);

const copyInfo = (info: ObjectInfo): ObjectInfo => ({
  ...info,
  metadata: {...info.metadata},
  createdAt: new Date(info.createdAt),
});

/** Objects in a Map: the object store of use case unit tests. */
export class MemoryObjectStore implements ObjectStore {
  readonly objects = new Map<string, {data: Buffer; info: ObjectInfo}>();

  async put(path: string, data: Buffer, info: {contentType: string; metadata: Record<string, string>}) {
    const existing = this.objects.get(path);
    if (existing) {
      if (existing.data.equals(data)) return;
      throw new Error(`Object already exists: ${path}`);
    }
    this.objects.set(path, {
      data: Buffer.from(data),
      info: {
        path,
        bytes: data.length,
        createdAt: new Date(),
        contentType: info.contentType,
        metadata: {...info.metadata},
      },
    });
  }

  async read(path: string): Promise<Readable | null> {
    const object = this.objects.get(path);
    return object ? Readable.from([object.data]) : null;
  }

  async stat(path: string): Promise<ObjectInfo | null> {
    const object = this.objects.get(path);
    return object ? copyInfo(object.info) : null;
  }

  async delete(path: string): Promise<boolean> {
    return this.objects.delete(path);
  }

  async list(prefix: string): Promise<ObjectInfo[]> {
    return [...this.objects.values()]
      .filter(object => object.info.path.startsWith(prefix))
      .map(object => copyInfo(object.info))
      .sort((a, b) => (a.path < b.path ? -1 : 1));
  }
}

/**
 * Jobs, images, keys and quotas in Maps: the metadata store of use case unit
 * tests. Every method runs to completion without yielding, which makes each
 * one atomic, as the real stores' transactions are.
 */
export class MemoryMetadataStore implements MetadataStore {
  readonly jobs = new Map<string, JobRecord>();
  readonly imageJobs = new Map<string, string>();
  readonly keys = new Map<string, IdempotencyRecord>();
  readonly quotas = new Map<string, number>();
  readonly reservations = new Map<string, QuotaReservation>();

  async createJob(job: JobRecord): Promise<void> {
    if (this.jobs.has(job.id)) throw new Error(`Job ${job.id} already exists`);
    this.jobs.set(job.id, copy(job));
  }

  async completeJob(job: JobRecord): Promise<boolean> {
    if (this.jobs.get(job.id)?.status !== 'running') return false;
    if (job.images.some(image => this.imageJobs.has(image.id))) {
      throw new Error(`An image of job ${job.id} already exists`);
    }
    this.jobs.set(job.id, copy(job));
    for (const image of job.images) this.imageJobs.set(image.id, job.id);
    this.reservations.delete(job.id);
    return true;
  }

  async failJob(id: string, error: JobError, updatedAt: string): Promise<boolean> {
    const job = this.jobs.get(id);
    if (job?.status !== 'running') return false;
    this.jobs.set(id, {
      ...job,
      status: 'failed',
      error: copy(error),
      lease_until: null,
      updated_at: updatedAt,
    });
    return true;
  }

  async getJob(id: string): Promise<JobRecord | null> {
    const job = this.jobs.get(id);
    return job ? copy(job) : null;
  }

  async getImage(id: string): Promise<ImageRecord | null> {
    const jobId = this.imageJobs.get(id);
    const image = jobId === undefined ? undefined : this.jobs.get(jobId)?.images.find(i => i.id === id);
    return image ? copy(image) : null;
  }

  async listJobs(query: JobQuery): Promise<JobPage> {
    const jobs = [...this.jobs.values()].filter(job => matchesQuery(job, query)).sort(compareNewestFirst);
    const page = jobs.slice(0, query.limit).map(copy);
    const last = page.at(-1);
    return {
      jobs: page,
      next: jobs.length > query.limit && last ? {createdAt: last.created_at, id: last.id} : null,
    };
  }

  async listStaleJobs(now: Date, limit: number): Promise<JobRecord[]> {
    return [...this.jobs.values()]
      .filter(
        job =>
          job.status === 'running' && job.lease_until !== null && Date.parse(job.lease_until) < now.getTime(),
      )
      .sort((a, b) => (a.created_at < b.created_at ? -1 : 1))
      .slice(0, limit)
      .map(copy);
  }

  async deleteImage(id: string, updatedAt: string): Promise<ImageRecord | null> {
    const jobId = this.imageJobs.get(id);
    if (jobId === undefined) return null;
    this.imageJobs.delete(id);
    const job = this.jobs.get(jobId);
    const image = job?.images.find(candidate => candidate.id === id);
    if (!job || !image) return null;
    this.jobs.set(jobId, {...job, images: job.images.filter(i => i.id !== id), updated_at: updatedAt});
    return copy(image);
  }

  async deleteJob(id: string): Promise<JobRecord | null> {
    const job = this.jobs.get(id);
    if (!job) return null;
    this.jobs.delete(id);
    for (const image of job.images) this.imageJobs.delete(image.id);
    return copy(job);
  }

  async claimIdempotencyKey(keyHash: string, claim: IdempotencyRecord, now: Date): Promise<ClaimOutcome> {
    const existing = this.keys.get(keyHash) ?? null;
    const job = existing ? keyJobState(this.jobs.get(existing.jobId) ?? null, now) : 'none';
    const {result, write} = decideClaim(existing, job, claim, now);
    if (write) this.keys.set(keyHash, copy(write));
    return result;
  }

  async completeIdempotencyKey(keyHash: string, jobId: string): Promise<void> {
    const record = this.keys.get(keyHash);
    if (record?.jobId === jobId) record.completed = true;
  }

  async releaseIdempotencyKey(keyHash: string, jobId: string): Promise<void> {
    const record = this.keys.get(keyHash);
    if (record?.jobId === jobId && !record.completed) this.keys.delete(keyHash);
  }

  async reserveQuota(reservation: QuotaReservation, limit: number) {
    const key = `${reservation.subject}/${reservation.day}`;
    const used = this.quotas.get(key) ?? 0;
    if (this.reservations.has(reservation.jobId)) return {ok: true, used};
    if (used + reservation.amount > limit) return {ok: false, used};
    this.quotas.set(key, used + reservation.amount);
    this.reservations.set(reservation.jobId, copy(reservation));
    return {ok: true, used: used + reservation.amount};
  }

  async releaseQuota(reservation: QuotaReservation): Promise<void> {
    const held = this.reservations.get(reservation.jobId);
    if (!held) return;
    this.reservations.delete(reservation.jobId);
    const key = `${held.subject}/${held.day}`;
    this.quotas.set(key, Math.max(0, (this.quotas.get(key) ?? 0) - held.amount));
  }

  async listQuotaReservations(before: Date, limit: number): Promise<QuotaReservation[]> {
    return [...this.reservations.values()]
      .filter(r => Date.parse(r.createdAt) < before.getTime())
      .sort((a, b) => (a.createdAt < b.createdAt ? -1 : 1))
      .slice(0, limit)
      .map(copy);
  }

  async ping(): Promise<void> {}
}
