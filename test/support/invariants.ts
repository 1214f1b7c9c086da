import {createHash} from 'node:crypto';
import {existsSync, readdirSync, readFileSync} from 'node:fs';
import {join, relative, sep} from 'node:path';
import {isDeepStrictEqual} from 'node:util';
import {DatabaseSync} from 'node:sqlite';
import type {Firestore, Timestamp} from '@google-cloud/firestore';
import {COLLECTIONS} from '../../src/adapters/firestore/metadata-store';
import {DATABASE_FILE} from '../../src/adapters/local/sqlite-metadata-store';
import type {ImageRecord, JobRecord} from '../../src/core/records';
import type {GcsTestServer} from './gcs-server';

/**
 * What the durability claims are checked against: everything both stores
 * hold, read straight from them (not through the function), in one shape for
 * both modes.
 */
export interface StoresSnapshot {
  jobs: JobRecord[];
  /**
   * The records kept under each image's own id (`images/<id>`). Firestore
   * keeps the whole record there; SQLite keeps only the id and its job (the
   * record itself is the job's entry), so `record` is null there.
   */
  imageRecords: {id: string; jobId: string; record: ImageRecord | null}[];
  /** Every object under images/, with the sha256 of its bytes. */
  objects: {path: string; sha256: string; metadata: Record<string, string>}[];
  /** Images counted against each subject's daily quota, summed over every day. */
  quotaUsed: Map<string, number>;
  /** Quota reservations not settled by their job. */
  reservations: {jobId: string; subject: string; amount: number; createdAt: string}[];
  idempotencyKeys: {keyHash: string; jobId: string; leaseUntil: Date; completed: boolean}[];
  /** Files of the local object store that are not a whole object (a write that never finished). */
  leftoverFiles: string[];
}

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** Cloud Storage (the test server) and Firestore (one project of an emulator). */
export async function gcpSnapshot(
  db: Firestore,
  gcs: GcsTestServer,
  bucket: string,
): Promise<StoresSnapshot> {
  const all = async (name: string) => (await db.collection(name).get()).docs;
  const [jobs, images, quotas, reservations, keys] = await Promise.all([
    all(COLLECTIONS.jobs),
    all(COLLECTIONS.images),
    all(COLLECTIONS.quotas),
    all(COLLECTIONS.reservations),
    all(COLLECTIONS.idempotency),
  ]);
  const quotaUsed = new Map<string, number>();
  for (const doc of quotas) {
    const subject = String(doc.get('subject'));
    quotaUsed.set(subject, (quotaUsed.get(subject) ?? 0) + Number(doc.get('used')));
  }
  return {
    jobs: jobs.map(doc => doc.data() as JobRecord),
    imageRecords: images.map(doc => {
      const record = doc.data() as ImageRecord;
      return {id: doc.id, jobId: record.job_id, record};
    }),
    objects: gcs.listObjectNames(bucket, 'images/').map(path => {
      const object = gcs.getObject(bucket, path)!;
      return {path, sha256: sha256(object.data), metadata: object.metadata};
    }),
    quotaUsed,
    reservations: reservations.map(doc => ({
      jobId: doc.id,
      subject: String(doc.get('subject')),
      amount: Number(doc.get('amount')),
      createdAt: String(doc.get('created_at')),
    })),
    idempotencyKeys: keys.map(doc => ({
      keyHash: doc.id,
      jobId: String(doc.get('job_id')),
      leaseUntil: (doc.get('lease_until') as Timestamp).toDate(),
      completed: doc.get('completed') === true,
    })),
    leftoverFiles: [],
  };
}

/** The objects of the local store under DATA_DIR, and the files that are no whole object. */
export function localObjects(dataDir: string): Pick<StoresSnapshot, 'objects' | 'leftoverFiles'> {
  const objectsRoot = join(dataDir, 'objects');
  const metaRoot = join(dataDir, 'object-meta');
  const filesUnder = (root: string): string[] =>
    existsSync(root)
      ? readdirSync(root, {recursive: true, withFileTypes: true})
          .filter(entry => entry.isFile())
          .map(entry => relative(root, join(entry.parentPath, entry.name)).split(sep).join('/'))
      : [];
  const objectFiles = filesUnder(objectsRoot);
  const sidecars = new Set(filesUnder(metaRoot));
  const objects: StoresSnapshot['objects'] = [];
  const leftoverFiles: string[] = [];
  for (const path of objectFiles) {
    if (!path.startsWith('images/') || !sidecars.has(`${path}.json`)) {
      leftoverFiles.push(`objects/${path}`);
      continue;
    }
    const sidecar = JSON.parse(readFileSync(join(metaRoot, `${path}.json`), 'utf8')) as {
      metadata: Record<string, string>;
    };
    objects.push({path, sha256: sha256(readFileSync(join(objectsRoot, path))), metadata: sidecar.metadata});
  }
  const objectSet = new Set(objectFiles);
  for (const sidecar of sidecars) {
    if (!objectSet.has(sidecar.replace(/\.json$/, ''))) leftoverFiles.push(`object-meta/${sidecar}`);
  }
  return {objects, leftoverFiles};
}

/** The local disk: DATA_DIR/objects, DATA_DIR/object-meta and DATA_DIR/imagegen.db. */
export function localSnapshot(dataDir: string): StoresSnapshot {
  const {objects, leftoverFiles} = localObjects(dataDir);
  const db = new DatabaseSync(join(dataDir, DATABASE_FILE), {readOnly: true});
  try {
    const rows = <T>(sql: string) => db.prepare(sql).all() as T[];
    const quotaUsed = new Map<string, number>();
    for (const row of rows<{subject: string; used: number}>('SELECT subject, used FROM quota_counters')) {
      quotaUsed.set(row.subject, (quotaUsed.get(row.subject) ?? 0) + row.used);
    }
    return {
      jobs: rows<{record: string}>('SELECT record FROM jobs').map(row => JSON.parse(row.record) as JobRecord),
      imageRecords: rows<{id: string; job_id: string}>('SELECT id, job_id FROM images').map(row => ({
        id: row.id,
        jobId: row.job_id,
        record: null,
      })),
      objects,
      quotaUsed,
      reservations: rows<{job_id: string; subject: string; amount: number; created_at: string}>(
        'SELECT job_id, subject, amount, created_at FROM quota_reservations',
      ).map(row => ({
        jobId: row.job_id,
        subject: row.subject,
        amount: row.amount,
        createdAt: row.created_at,
      })),
      idempotencyKeys: rows<{key_hash: string; job_id: string; lease_until_ms: number; completed: number}>(
        'SELECT key_hash, job_id, lease_until_ms, completed FROM idempotency_keys',
      ).map(row => ({
        keyHash: row.key_hash,
        jobId: row.job_id,
        leaseUntil: new Date(row.lease_until_ms),
        completed: row.completed === 1,
      })),
      leftoverFiles,
    };
  } finally {
    db.close();
  }
}

export interface InvariantOptions {
  /**
   * The time the stores are judged at. After the reconciler has run, the
   * reconciler's own clock: no job may then be running past its lease.
   */
  now: Date;
  /** How long a run holds its job: a quota reservation younger than this may still be settled by its run. */
  leaseMs: number;
  /** The API key names that have a daily quota: their counters are checked against their jobs. */
  quotaSubjects?: string[];
}

/**
 * Every way the stores can disagree with each other, as readable lines (none
 * when they agree):
 *
 * - Jobs: a `running` job is within its lease; a `failed` job has no images
 *   and no object left under images/<job_id>/; a `completed` job has all the
 *   images it asked for, a `partial` one has them but for its failed calls
 *   (an image a record dropped because its object was gone is a loss, and
 *   shows here).
 * - Image records: each image of a finished job has its object, with the
 *   recorded sha256 (of the bytes, and in the object's metadata, which names
 *   the job and the image), and its record under its own id; each record
 *   under an image id belongs to a finished job that lists it.
 * - Objects: each object under images/ belongs to a finished job that lists
 *   it, or to a job still running within its lease (its run may still
 *   complete it). A local write that never finished leaves no file behind.
 * - Quota, for each subject with a quota: what the counters hold (all days
 *   together) equals the images reserved by its finished jobs plus what is
 *   still held for runs that may finish. A finished job keeps its whole
 *   reservation: `parameters.count`, also for a partial job, whose failed
 *   calls were paid for by the caller's request all the same. A reservation
 *   is held only by a job still running within its lease, or for less than a
 *   lease (its run may still give it back); anything else is quota consumed
 *   for images never made.
 * - Idempotency keys: a key marked completed points at a finished job (or at
 *   none, once deleted). Whether a key answers 409 past its lease is
 *   checked through the API, by retrying it.
 */
export function invariantViolations(snapshot: StoresSnapshot, options: InvariantOptions): string[] {
  const problems: string[] = [];
  const now = options.now.getTime();
  const jobs = new Map(snapshot.jobs.map(job => [job.id, job]));
  const objects = new Map(snapshot.objects.map(object => [object.path, object]));
  const imageRecords = new Map(snapshot.imageRecords.map(record => [record.id, record]));
  const finished = (job: JobRecord | undefined) => job?.status === 'completed' || job?.status === 'partial';
  const runningInLease = (job: JobRecord | undefined) =>
    job?.status === 'running' && job.lease_until !== null && Date.parse(job.lease_until) >= now;

  for (const job of snapshot.jobs) {
    const name = `job ${job.id} (${job.status})`;
    const under = snapshot.objects.filter(object => object.path.startsWith(`images/${job.id}/`));
    if (job.status === 'running' && !runningInLease(job)) {
      problems.push(`${name} is running past its lease (${job.lease_until})`);
    }
    if (job.status === 'failed') {
      if (job.images.length > 0) problems.push(`${name} lists ${job.images.length} images`);
      for (const object of under) problems.push(`${name} left object ${object.path}`);
    }
    if (!finished(job)) continue;
    const failedCalls = job.failures.reduce((sum, failure) => sum + failure.count, 0);
    if (job.images.length + failedCalls !== job.parameters.count) {
      problems.push(
        `${name} asked for ${job.parameters.count} images and lists ${job.images.length} (+${failedCalls} in failed calls)`,
      );
    }
    for (const image of job.images) {
      const what = `image ${image.id} of ${name}`;
      const object = objects.get(image.object_path);
      if (image.job_id !== job.id || !image.object_path.startsWith(`images/${job.id}/`)) {
        problems.push(`${what} is filed under another job (${image.job_id}, ${image.object_path})`);
      }
      if (!object) {
        problems.push(`${what} points at ${image.object_path}, which is gone`);
      } else {
        if (object.sha256 !== image.sha256) problems.push(`${what}: the object's bytes have another sha256`);
        const m = object.metadata;
        if (m.sha256 !== image.sha256 || m.job_id !== job.id || m.image_id !== image.id) {
          problems.push(`${what}: the object's metadata names another image (${JSON.stringify(m)})`);
        }
      }
      const record = imageRecords.get(image.id);
      if (!record) problems.push(`${what} has no record under its own id`);
      else if (
        record.jobId !== job.id ||
        (record.record !== null && !isDeepStrictEqual(record.record, image))
      ) {
        problems.push(`${what}: the record under its own id differs from the job's`);
      }
    }
  }

  for (const record of snapshot.imageRecords) {
    const job = jobs.get(record.jobId);
    if (!finished(job) || !job!.images.some(image => image.id === record.id)) {
      problems.push(`image record ${record.id} belongs to no finished job listing it (job ${record.jobId})`);
    }
  }

  for (const object of snapshot.objects) {
    const jobId = object.path.split('/')[1] ?? '';
    const job = jobs.get(jobId);
    if (runningInLease(job)) continue;
    if (!finished(job) || !job!.images.some(image => image.object_path === object.path)) {
      problems.push(
        `object ${object.path} belongs to no finished job listing it (job: ${job?.status ?? 'none'})`,
      );
    }
  }
  for (const file of snapshot.leftoverFiles) problems.push(`${file} is not a whole object`);

  for (const reservation of snapshot.reservations) {
    const job = jobs.get(reservation.jobId);
    const young = Date.parse(reservation.createdAt) + options.leaseMs > now;
    if (!runningInLease(job) && !young) {
      problems.push(
        `quota reservation of ${reservation.amount} for job ${reservation.jobId} (${job?.status ?? 'never recorded'}) is still held`,
      );
    }
  }
  for (const subject of options.quotaSubjects ?? []) {
    const kept = snapshot.jobs
      .filter(job => job.owner === subject && finished(job))
      .reduce((sum, job) => sum + job.parameters.count, 0);
    const held = snapshot.reservations
      .filter(reservation => reservation.subject === subject)
      .reduce((sum, reservation) => sum + reservation.amount, 0);
    const used = snapshot.quotaUsed.get(subject) ?? 0;
    if (used !== kept + held) {
      problems.push(
        `quota of ${subject}: ${used} counted, but its finished jobs reserved ${kept} and ${held} is held for runs`,
      );
    }
  }

  for (const key of snapshot.idempotencyKeys) {
    const job = jobs.get(key.jobId);
    if (key.completed && job && !finished(job)) {
      problems.push(`idempotency key ${key.keyHash} is completed but its job ${key.jobId} is ${job.status}`);
    }
  }
  return problems;
}

/** Fails with every violation listed, when there is any. */
export function expectInvariants(snapshot: StoresSnapshot, options: InvariantOptions): void {
  expect(invariantViolations(snapshot, options)).toEqual([]);
}

/** How many jobs, images and objects the stores hold, by kind: for the figures a scenario prints. */
export function tally(snapshot: StoresSnapshot): Record<string, number> {
  const count = (status: JobRecord['status']) => snapshot.jobs.filter(job => job.status === status).length;
  return {
    jobs_completed: count('completed'),
    jobs_partial: count('partial'),
    jobs_failed: count('failed'),
    jobs_running: count('running'),
    images: snapshot.imageRecords.length,
    objects: snapshot.objects.length,
  };
}
