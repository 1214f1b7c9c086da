import type {Firestore} from '@google-cloud/firestore';
import type {ImageRecord, JobRecord} from '../domain/records';
import type {JobPage, JobQuery, MetadataStore} from '../ports';

export const COLLECTIONS = {jobs: 'jobs', images: 'images'} as const;

/**
 * Jobs and images in Firestore: `jobs/<id>` holds the job with its images, and
 * `images/<id>` holds each image, so either is one read by id. Writes that
 * touch both go in one batch or transaction.
 */
export class FirestoreMetadataStore implements MetadataStore {
  readonly kind = 'firestore';

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
    if (query.metadata) q = q.where(new this.fieldPath('metadata', query.metadata.key), '==', query.metadata.value);
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

  async ping(): Promise<void> {
    await this.db.collection(COLLECTIONS.jobs).limit(1).get();
  }
}
