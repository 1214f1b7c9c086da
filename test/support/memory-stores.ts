import {Readable} from 'node:stream';
import {compareNewestFirst, matchesQuery} from '../../src/core/job-order';
import type {
  ClaimOutcome,
  IdempotencyRecord,
  JobPage,
  JobQuery,
  MetadataStore,
  ObjectStore,
} from '../../src/core/ports';
import type {ImageRecord, JobRecord} from '../../src/core/records';
import {decideClaim} from '../../src/core/usecases/idempotency';

/** Records are copied in and out, as a real store serializes them. */
const copy = <T>(value: T): T => structuredClone(value);

/** Objects in a Map: the object store of use case unit tests. */
export class MemoryObjectStore implements ObjectStore {
  readonly objects = new Map<string, {data: Buffer; contentType: string; metadata: Record<string, string>}>();

  async put(path: string, data: Buffer, info: {contentType: string; metadata: Record<string, string>}) {
    if (this.objects.has(path)) throw new Error(`Object already exists: ${path}`);
    this.objects.set(path, {data: Buffer.from(data), ...copy(info)});
  }

  async read(path: string): Promise<Readable | null> {
    const object = this.objects.get(path);
    return object ? Readable.from([object.data]) : null;
  }

  async delete(path: string): Promise<boolean> {
    return this.objects.delete(path);
  }

  async list(prefix: string): Promise<string[]> {
    return [...this.objects.keys()].filter(path => path.startsWith(prefix)).sort();
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

  async saveJob(job: JobRecord): Promise<void> {
    if (this.jobs.has(job.id) || job.images.some(image => this.imageJobs.has(image.id))) {
      throw new Error(`Job ${job.id} or one of its images already exists`);
    }
    this.jobs.set(job.id, copy(job));
    for (const image of job.images) this.imageJobs.set(image.id, job.id);
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
    const jobExists = existing ? this.jobs.has(existing.jobId) : false;
    const {result, write} = decideClaim(existing, jobExists, claim, now);
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

  async reserveQuota(subject: string, day: string, amount: number, limit: number) {
    const used = this.quotas.get(`${subject}/${day}`) ?? 0;
    if (used + amount > limit) return {ok: false, used};
    this.quotas.set(`${subject}/${day}`, used + amount);
    return {ok: true, used: used + amount};
  }

  async releaseQuota(subject: string, day: string, amount: number): Promise<void> {
    const key = `${subject}/${day}`;
    this.quotas.set(key, Math.max(0, (this.quotas.get(key) ?? 0) - amount));
  }

  async ping(): Promise<void> {}
}
