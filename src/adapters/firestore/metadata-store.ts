import {randomUUID} from 'node:crypto';
import {isDeepStrictEqual} from 'node:util';
import type {Firestore, Timestamp} from '@google-cloud/firestore';
import type {
  ClaimOutcome,
  IdempotencyRecord,
  JobPage,
  JobQuery,
  MetadataStore,
  QuotaReservation,
} from '../../core/ports';
import type {ImageRecord, JobError, JobRecord} from '../../core/records';
import {decideClaim, keyJobState} from '../../core/usecases/idempotency';

export const COLLECTIONS = {
  jobs: 'jobs',
  images: 'images',
  idempotency: 'idempotency',
  quotas: 'quotas',
  reservations: 'quota_reservations',
  readiness: 'readiness',
} as const;

/** Quota counters and open reservations are kept two days, then removed by the TTL policy field. */
const QUOTA_KEEP_MS = 2 * 24 * 3600_000;

/** Requests of one caller or one key contend on one document; give the transaction room to retry. */
const CONTENDED = {maxAttempts: 10};

/** gRPC ALREADY_EXISTS: what create() answers when the document is there. */
const ALREADY_EXISTS = 6;

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

interface ReservationDoc {
  subject: string;
  day: string;
  amount: number;
  created_at: string;
  expires_at: Date;
}

/**
 * Jobs and images in Firestore: `jobs/<id>` holds the job with its images, and
 * `images/<id>` holds each image, so either is one read by id. Every write
 * that touches more than one document is a transaction, and every one is safe
 * to repeat (the client repeats a transaction whose commit it lost).
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

  private reservationRef(jobId: string) {
    return this.db.collection(COLLECTIONS.reservations).doc(jobId);
  }

  private quotaRef(subject: string, day: string) {
    return this.db.collection(COLLECTIONS.quotas).doc(`${subject}_${day}`);
  }

  async createJob(job: JobRecord): Promise<void> {
    try {
      await this.jobRef(job.id).create(job);
    } catch (error) {
      // A create repeated after its answer was lost finds itself: that is success.
      if ((error as {code?: unknown}).code !== ALREADY_EXISTS) throw error;
      if (!isDeepStrictEqual(await this.getJob(job.id), job)) throw error;
    }
  }

  completeJob(job: JobRecord): Promise<boolean> {
    return this.db.runTransaction(async tx => {
      const snapshot = await tx.get(this.jobRef(job.id));
      if (!snapshot.exists || (snapshot.data() as JobRecord).status !== 'running') return false;
      // create() fails the whole transaction if an image id is taken: all or nothing.
      for (const image of job.images) tx.create(this.imageRef(image.id), image);
      tx.set(this.jobRef(job.id), job);
      tx.delete(this.reservationRef(job.id));
      return true;
    });
  }

  failJob(id: string, error: JobError, updatedAt: string): Promise<boolean> {
    return this.db.runTransaction(async tx => {
      const snapshot = await tx.get(this.jobRef(id));
      if (!snapshot.exists || (snapshot.data() as JobRecord).status !== 'running') return false;
      tx.update(this.jobRef(id), {status: 'failed', error, lease_until: null, updated_at: updatedAt});
      return true;
    });
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
    if (query.owner !== undefined) q = q.where('owner', '==', query.owner);
    if (query.source) q = q.where('source', '==', query.source);
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

  async listStaleJobs(now: Date, limit: number): Promise<JobRecord[]> {
    const snapshot = await this.db
      .collection(COLLECTIONS.jobs)
      .where('status', '==', 'running')
      .where('lease_until', '<', now.toISOString())
      .orderBy('lease_until')
      .limit(limit)
      .get();
    return snapshot.docs
      .map(doc => doc.data() as JobRecord)
      .sort((a, b) => (a.created_at < b.created_at ? -1 : 1));
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
      const job = existing ? await tx.get(this.jobRef(existing.jobId)) : null;
      const state = keyJobState(job?.exists ? (job.data() as JobRecord) : null, now);
      const {result, write} = decideClaim(existing, state, claim, now);
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

  reserveQuota(reservation: QuotaReservation, limit: number): Promise<{ok: boolean; used: number}> {
    const ref = this.quotaRef(reservation.subject, reservation.day);
    const held = this.reservationRef(reservation.jobId);
    return this.db.runTransaction(async tx => {
      const [counter, existing] = await tx.getAll(ref, held);
      const used = counter!.exists ? Number(counter!.get('used')) : 0;
      if (existing!.exists) return {ok: true, used};
      if (used + reservation.amount > limit) return {ok: false, used};
      const expires = new Date(Date.parse(`${reservation.day}T00:00:00Z`) + QUOTA_KEEP_MS);
      tx.set(ref, {
        subject: reservation.subject,
        day: reservation.day,
        used: used + reservation.amount,
        expires_at: expires,
      });
      tx.create(held, {
        subject: reservation.subject,
        day: reservation.day,
        amount: reservation.amount,
        created_at: reservation.createdAt,
        expires_at: expires,
      } satisfies ReservationDoc);
      return {ok: true, used: used + reservation.amount};
    }, CONTENDED);
  }

  async releaseQuota(reservation: QuotaReservation): Promise<void> {
    const held = this.reservationRef(reservation.jobId);
    await this.db.runTransaction(async tx => {
      const existing = await tx.get(held);
      if (!existing.exists) return;
      const doc = existing.data() as ReservationDoc;
      const ref = this.quotaRef(doc.subject, doc.day);
      const counter = await tx.get(ref);
      if (counter.exists) tx.update(ref, {used: Math.max(0, Number(counter.get('used')) - doc.amount)});
      tx.delete(held);
    }, CONTENDED);
  }

  async listQuotaReservations(before: Date, limit: number): Promise<QuotaReservation[]> {
    const snapshot = await this.db
      .collection(COLLECTIONS.reservations)
      .where('created_at', '<', before.toISOString())
      .orderBy('created_at')
      .limit(limit)
      .get();
    return snapshot.docs.map(doc => {
      const data = doc.data() as ReservationDoc;
      return {
        subject: data.subject,
        day: data.day,
        jobId: doc.id,
        amount: data.amount,
        createdAt: data.created_at,
      };
    });
  }

  async ping(): Promise<void> {
    await this.db.collection(COLLECTIONS.jobs).limit(1).get();
  }

  /**
   * A small document written and removed: Firestore has no way to ask for
   * write permission without writing.
   */
  async checkWritable(): Promise<void> {
    const probe = this.db.collection(COLLECTIONS.readiness).doc(randomUUID());
    await probe.create({checked_at: new Date()});
    await probe.delete();
  }
}

/**
 * gRPC codes after which a write may still have been applied (or be applied
 * later): 1 CANCELLED, 2 UNKNOWN, 4 DEADLINE_EXCEEDED, 13 INTERNAL, 14 UNAVAILABLE.
 */
const OUTCOME_UNKNOWN_CODES = new Set([1, 2, 4, 13, 14]);

/** How the deadline wrapper tells a Firestore read from a write, and an open outcome from a failure. */
export const FIRESTORE_DEADLINES = {
  name: 'metadata store',
  reads: new Set<keyof MetadataStore>([
    'getJob',
    'getImage',
    'listJobs',
    'listStaleJobs',
    'listQuotaReservations',
    'ping',
  ]),
  writes: new Set<keyof MetadataStore>([
    'createJob',
    'completeJob',
    'failJob',
    'deleteImage',
    'deleteJob',
    'claimIdempotencyKey',
    'completeIdempotencyKey',
    'releaseIdempotencyKey',
    'reserveQuota',
    'releaseQuota',
    'checkWritable',
  ]),
  outcomeUnknown: (error: unknown) => {
    const code = (error as {code?: unknown} | null)?.code;
    return typeof code === 'number' && OUTCOME_UNKNOWN_CODES.has(code);
  },
};
