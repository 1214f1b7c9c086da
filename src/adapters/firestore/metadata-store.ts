import type {Firestore, Timestamp} from '@google-cloud/firestore';
import type {ImageRecord, JobRecord} from '../../core/records';
import type {ClaimOutcome, IdempotencyRecord, JobPage, JobQuery, MetadataStore} from '../../core/ports';
import {decideClaim} from '../../core/usecases/idempotency';

export const COLLECTIONS = {
  jobs: 'jobs',
  images: 'images',
  idempotency: 'idempotency',
  quotas: 'quotas',
} as const;

/** Quota counters are kept two days, then removed by the same TTL policy field. */
const QUOTA_KEEP_MS = 2 * 24 * 3600_000;

/** Requests of one caller or one key contend on one document; give the transaction room to retry. */
const CONTENDED = {maxAttempts: 10};

/** An IdempotencyRecord as stored: dates as Timestamps, so a TTL policy on `expires_at` deletes old keys. */
interface IdempotencyDoc {
  fingerprint: string;
  job_id: string;
  lease_until: Timestamp;
  expires_at: Timestamp;
  completed: boolean;
}

function toDoc(record: IdempotencyRecord): Record<keyof IdempotencyDoc, unknown> {
  return {
    fingerprint: record.fingerprint,
    job_id: record.jobId,
    lease_until: record.leaseUntil,
    expires_at: record.expiresAt,
    completed: record.completed,
  };
}

function fromDoc(doc: IdempotencyDoc): IdempotencyRecord {
  return {
    fingerprint: doc.fingerprint,
    jobId: doc.job_id,
    leaseUntil: doc.lease_until.toDate(),
    expiresAt: doc.expires_at.toDate(),
    completed: doc.completed,
  };
}

/**
 * Jobs and images in Firestore: `jobs/<id>` holds the job with its images, and
 * `images/<id>` holds each image, so either is one read by id. Writes that
 * touch both go in one batch or transaction.
 */
export class FirestoreMetadataStore implements MetadataStore {
  constructor(
    private readonly db: Firestore,
    private readonly fieldPath: typeof import('@google-cloud/firestore').FieldPath,
  ) {}

  private jobRef(id: string) {
    return this.db.collection(COLLECTIONS.jobs).doc(id);
  }

  private imageRef(id: string) {
    return this.db.collection(COLLECTIONS.images).doc(id);
  }

  async saveJob(job: JobRecord): Promise<void> {
    // create() fails with ALREADY_EXISTS instead of overwriting.
    const batch = this.db.batch();
    batch.create(this.jobRef(job.id), job);
    for (const image of job.images) batch.create(this.imageRef(image.id), image);
    await batch.commit();
  }

  async getJob(id: string): Promise<JobRecord | null> {
    const snapshot = await this.jobRef(id).get();
    return snapshot.exists ? (snapshot.data() as JobRecord) : null;
  }

  async getImage(id: string): Promise<ImageRecord | null> {
    const snapshot = await this.imageRef(id).get();
    return snapshot.exists ? (snapshot.data() as ImageRecord) : null;
  }

  async listJobs(query: JobQuery): Promise<JobPage> {
    let q = this.db
      .collection(COLLECTIONS.jobs)
      .orderBy('created_at', 'desc')
      .orderBy(this.fieldPath.documentId(), 'desc');
    if (query.status) q = q.where('status', '==', query.status);
    if (query.metadata)
      q = q.where(new this.fieldPath('metadata', query.metadata.key), '==', query.metadata.value);
    if (query.after) q = q.startAfter(query.after.createdAt, query.after.id);
    const snapshot = await q.limit(query.limit + 1).get();
    const jobs = snapshot.docs.map(doc => doc.data() as JobRecord);
    const page = jobs.slice(0, query.limit);
    const last = page.at(-1);
    return {
      jobs: page,
      next: jobs.length > query.limit && last ? {createdAt: last.created_at, id: last.id} : null,
    };
  }

  deleteImage(id: string, updatedAt: string): Promise<ImageRecord | null> {
    return this.db.runTransaction(async tx => {
      const imageSnapshot = await tx.get(this.imageRef(id));
      if (!imageSnapshot.exists) return null;
      const image = imageSnapshot.data() as ImageRecord;
      const jobSnapshot = await tx.get(this.jobRef(image.job_id));
      if (jobSnapshot.exists) {
        const job = jobSnapshot.data() as JobRecord;
        tx.update(this.jobRef(image.job_id), {
          images: job.images.filter(candidate => candidate.id !== id),
          updated_at: updatedAt,
        });
      }
      tx.delete(this.imageRef(id));
      return image;
    });
  }

  deleteJob(id: string): Promise<JobRecord | null> {
    return this.db.runTransaction(async tx => {
      const snapshot = await tx.get(this.jobRef(id));
      if (!snapshot.exists) return null;
      const job = snapshot.data() as JobRecord;
      tx.delete(this.jobRef(id));
      for (const image of job.images) tx.delete(this.imageRef(image.id));
      return job;
    });
  }

  claimIdempotencyKey(keyHash: string, claim: IdempotencyRecord, now: Date): Promise<ClaimOutcome> {
    const ref = this.db.collection(COLLECTIONS.idempotency).doc(keyHash);
    return this.db.runTransaction(async tx => {
      const snapshot = await tx.get(ref);
      const existing = snapshot.exists ? fromDoc(snapshot.data() as IdempotencyDoc) : null;
      const jobExists = existing ? (await tx.get(this.jobRef(existing.jobId))).exists : false;
      const {result, write} = decideClaim(existing, jobExists, claim, now);
      if (write) tx.set(ref, toDoc(write));
      return result;
    }, CONTENDED);
  }

  async completeIdempotencyKey(keyHash: string, jobId: string): Promise<void> {
    const ref = this.db.collection(COLLECTIONS.idempotency).doc(keyHash);
    await this.db.runTransaction(async tx => {
      const snapshot = await tx.get(ref);
      if (snapshot.exists && (snapshot.data() as IdempotencyDoc).job_id === jobId)
        tx.update(ref, {completed: true});
    });
  }

  async releaseIdempotencyKey(keyHash: string, jobId: string): Promise<void> {
    const ref = this.db.collection(COLLECTIONS.idempotency).doc(keyHash);
    await this.db.runTransaction(async tx => {
      const snapshot = await tx.get(ref);
      const doc = snapshot.exists ? (snapshot.data() as IdempotencyDoc) : null;
      if (doc && doc.job_id === jobId && !doc.completed) tx.delete(ref);
    });
  }

  reserveQuota(
    subject: string,
    day: string,
    amount: number,
    limit: number,
  ): Promise<{ok: boolean; used: number}> {
    const ref = this.quotaRef(subject, day);
    return this.db.runTransaction(async tx => {
      const snapshot = await tx.get(ref);
      const used = snapshot.exists ? Number(snapshot.get('used')) : 0;
      if (used + amount > limit) return {ok: false, used};
      tx.set(ref, {
        subject,
        day,
        used: used + amount,
        expires_at: new Date(Date.parse(`${day}T00:00:00Z`) + QUOTA_KEEP_MS),
      });
      return {ok: true, used: used + amount};
    }, CONTENDED);
  }

  async releaseQuota(subject: string, day: string, amount: number): Promise<void> {
    const ref = this.quotaRef(subject, day);
    await this.db.runTransaction(async tx => {
      const snapshot = await tx.get(ref);
      if (snapshot.exists) tx.update(ref, {used: Math.max(0, Number(snapshot.get('used')) - amount)});
    }, CONTENDED);
  }

  private quotaRef(subject: string, day: string) {
    return this.db.collection(COLLECTIONS.quotas).doc(`${subject}_${day}`);
  }

  async ping(): Promise<void> {
    await this.db.collection(COLLECTIONS.jobs).limit(1).get();
  }
}
