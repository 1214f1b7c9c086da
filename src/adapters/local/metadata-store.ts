import {promises as fs} from 'node:fs';
import * as path from 'node:path';
import type {ImageRecord, JobRecord} from '../../core/records';
import type {ClaimOutcome, IdempotencyRecord, JobPage, JobQuery, MetadataStore} from '../../core/ports';
import {decideClaim} from '../../core/usecases/idempotency';
import {compareNewestFirst, matchesQuery} from '../../core/job-order';
import {
  KeyedMutex,
  createExclusive,
  isAlreadyExists,
  isNotFound,
  readJson,
  removeFile,
  replaceAtomically,
  resolveInside,
} from './fs';

interface ImageIndexEntry {
  job_id: string;
}

/** An IdempotencyRecord as stored: dates as ISO strings. */
interface IdempotencyFile {
  fingerprint: string;
  job_id: string;
  lease_until: string;
  expires_at: string;
  completed: boolean;
}

function toFile(record: IdempotencyRecord): IdempotencyFile {
  return {
    fingerprint: record.fingerprint,
    job_id: record.jobId,
    lease_until: record.leaseUntil.toISOString(),
    expires_at: record.expiresAt.toISOString(),
    completed: record.completed,
  };
}

function fromFile(file: IdempotencyFile): IdempotencyRecord {
  return {
    fingerprint: file.fingerprint,
    jobId: file.job_id,
    leaseUntil: new Date(file.lease_until),
    expiresAt: new Date(file.expires_at),
    completed: file.completed,
  };
}

/**
 * Jobs and images on the local disk. The job file (`jobs/<id>.json`, images
 * included) is the record; `images/<id>.json` only points from an image to its
 * job, so one atomic rename commits a job with all its images.
 */
export class LocalMetadataStore implements MetadataStore {
  private readonly root: string;
  private readonly jobLocks = new KeyedMutex();
  private readonly keyLocks = new KeyedMutex();

  constructor(dataDir: string) {
    this.root = path.resolve(dataDir, 'records');
  }

  async saveJob(job: JobRecord): Promise<void> {
    const written: string[] = [];
    try {
      for (const image of job.images) {
        const file = this.imageIndexPath(image.id);
        await createExclusive(file, JSON.stringify({job_id: job.id} satisfies ImageIndexEntry));
        written.push(file);
      }
      await createExclusive(this.jobPath(job.id), JSON.stringify(job));
    } catch (error) {
      await Promise.allSettled(written.map(removeFile));
      if (isAlreadyExists(error))
        throw new Error(`Job ${job.id} or one of its images already exists`, {cause: error});
      throw error;
    }
  }

  getJob(id: string): Promise<JobRecord | null> {
    return readJson<JobRecord>(this.jobPath(id));
  }

  async getImage(id: string): Promise<ImageRecord | null> {
    const entry = await readJson<ImageIndexEntry>(this.imageIndexPath(id));
    if (!entry) return null;
    const job = await this.getJob(entry.job_id);
    return job?.images.find(image => image.id === id) ?? null;
  }

  async listJobs(query: JobQuery): Promise<JobPage> {
    const dir = path.join(this.root, 'jobs');
    let names: string[];
    try {
      names = (await fs.readdir(dir)).filter(name => name.endsWith('.json'));
    } catch (error) {
      if (isNotFound(error)) return {jobs: [], next: null};
      throw error;
    }
    const jobs = (await Promise.all(names.map(name => readJson<JobRecord>(path.join(dir, name)))))
      .filter((job): job is JobRecord => job !== null && matchesQuery(job, query))
      .sort(compareNewestFirst);
    const page = jobs.slice(0, query.limit);
    const last = page.at(-1);
    return {
      jobs: page,
      next: jobs.length > query.limit && last ? {createdAt: last.created_at, id: last.id} : null,
    };
  }

  async deleteImage(id: string, updatedAt: string): Promise<ImageRecord | null> {
    const entry = await readJson<ImageIndexEntry>(this.imageIndexPath(id));
    if (!entry) return null;
    return this.jobLocks.run(entry.job_id, async () => {
      const job = await this.getJob(entry.job_id);
      const image = job?.images.find(candidate => candidate.id === id);
      if (!job || !image) {
        await removeFile(this.imageIndexPath(id));
        return null;
      }
      const updated: JobRecord = {
        ...job,
        images: job.images.filter(candidate => candidate.id !== id),
        updated_at: updatedAt,
      };
      await replaceAtomically(this.jobPath(job.id), JSON.stringify(updated));
      await removeFile(this.imageIndexPath(id));
      return image;
    });
  }

  async deleteJob(id: string): Promise<JobRecord | null> {
    return this.jobLocks.run(id, async () => {
      const job = await this.getJob(id);
      if (!job) return null;
      await removeFile(this.jobPath(id));
      await Promise.all(job.images.map(image => removeFile(this.imageIndexPath(image.id))));
      return job;
    });
  }

  /**
   * A new key is taken with an exclusive create, so two processes sharing the
   * data directory cannot both win; takeovers of expired or crashed claims
   * are serialised within this process.
   */
  claimIdempotencyKey(keyHash: string, claim: IdempotencyRecord, now: Date): Promise<ClaimOutcome> {
    return this.keyLocks.run(keyHash, async () => {
      const file = this.idempotencyPath(keyHash);
      for (;;) {
        const stored = await readJson<IdempotencyFile>(file);
        const existing = stored && fromFile(stored);
        const jobExists = existing ? (await this.getJob(existing.jobId)) !== null : false;
        const {result, write} = decideClaim(existing, jobExists, claim, now);
        if (!write) return result;
        const record = toFile(write);
        if (existing) {
          await replaceAtomically(file, JSON.stringify(record));
          return result;
        }
        try {
          await createExclusive(file, JSON.stringify(record));
          return result;
        } catch (error) {
          if (!isAlreadyExists(error)) throw error;
          // Another process claimed it first: decide again on what it wrote.
        }
      }
    });
  }

  completeIdempotencyKey(keyHash: string, jobId: string): Promise<void> {
    return this.keyLocks.run(keyHash, async () => {
      const file = this.idempotencyPath(keyHash);
      const stored = await readJson<IdempotencyFile>(file);
      if (stored?.job_id === jobId)
        await replaceAtomically(file, JSON.stringify({...stored, completed: true}));
    });
  }

  releaseIdempotencyKey(keyHash: string, jobId: string): Promise<void> {
    return this.keyLocks.run(keyHash, async () => {
      const file = this.idempotencyPath(keyHash);
      const stored = await readJson<IdempotencyFile>(file);
      if (stored?.job_id === jobId && !stored.completed) await removeFile(file);
    });
  }

  reserveQuota(
    subject: string,
    day: string,
    amount: number,
    limit: number,
  ): Promise<{ok: boolean; used: number}> {
    return this.keyLocks.run(`quota:${subject}:${day}`, async () => {
      const file = this.quotaPath(subject, day);
      const used = (await readJson<{used: number}>(file))?.used ?? 0;
      if (used + amount > limit) return {ok: false, used};
      await replaceAtomically(file, JSON.stringify({used: used + amount}));
      return {ok: true, used: used + amount};
    });
  }

  releaseQuota(subject: string, day: string, amount: number): Promise<void> {
    return this.keyLocks.run(`quota:${subject}:${day}`, async () => {
      const file = this.quotaPath(subject, day);
      const used = (await readJson<{used: number}>(file))?.used ?? 0;
      await replaceAtomically(file, JSON.stringify({used: Math.max(0, used - amount)}));
    });
  }

  async ping(): Promise<void> {
    await fs.mkdir(this.root, {recursive: true});
  }

  private jobPath(id: string): string {
    return resolveInside(this.root, `jobs/${id}.json`);
  }

  private quotaPath(subject: string, day: string): string {
    return resolveInside(this.root, `quotas/${subject}_${day}.json`);
  }

  private idempotencyPath(keyHash: string): string {
    return resolveInside(this.root, `idempotency/${keyHash}.json`);
  }

  private imageIndexPath(id: string): string {
    return resolveInside(this.root, `images/${id}.json`);
  }
}
