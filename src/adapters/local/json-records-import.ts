import {promises as fs} from 'node:fs';
import * as path from 'node:path';
import type {IdempotencyRecord} from '../../core/ports';
import {JobParametersSchema, type ImageRecord, type JobParameters, type JobRecord} from '../../core/records';

/**
 * Reads what the JSON-file metadata store left under `<dataDir>/records`, in
 * today's record shapes, for a one-time import into the SQLite store:
 *
 *   jobs/<id>.json              the job record, its images included
 *   images/<id>.json            {job_id}: only an index of the images above, not read
 *   idempotency/<hash>.json     {fingerprint, job_id, lease_until, expires_at, completed}
 *   quotas/<subject>_<day>.json {used}
 *
 * Temporary files of interrupted writes (`*.json.tmp-*`) are not records.
 */

export interface JsonRecords {
  jobs: JobRecord[];
  idempotencyKeys: {keyHash: string; record: IdempotencyRecord}[];
  quotaCounters: {subject: string; day: string; used: number}[];
  /** Files that could not be read as records, relative to the records directory (kept on disk). */
  skipped: string[];
}

/** A job as the JSON store wrote it: before owners, leases, errors and warnings, with a prompt per image. */
type JsonJob = Omit<
  JobRecord,
  'owner' | 'error' | 'lease_until' | 'warnings' | 'source_images' | 'parameters' | 'images'
> &
  Partial<Pick<JobRecord, 'owner' | 'error' | 'lease_until' | 'warnings' | 'source_images'>> & {
    parameters: Partial<JobParameters> & {model: string};
    images: (ImageRecord & {prompt?: string})[];
  };

interface JsonIdempotencyKey {
  fingerprint: string;
  job_id: string;
  lease_until: string;
  expires_at: string;
  completed: boolean;
}

const QUOTA_FILE = /^(.+)_(\d{4}-\d{2}-\d{2})\.json$/;

/** Files read at once: enough to keep the disk busy, few enough to stay within file-descriptor limits. */
const READ_CONCURRENCY = 32;

export async function readJsonRecords(recordsDir: string): Promise<JsonRecords> {
  const records: JsonRecords = {jobs: [], idempotencyKeys: [], quotaCounters: [], skipped: []};

  const jobs = await readDirectory<JsonJob>(recordsDir, 'jobs', records.skipped);
  for (const {name, value} of jobs) {
    if (isJsonJob(value)) records.jobs.push(upgradeJsonJob(value));
    else records.skipped.push(`jobs/${name}`);
  }

  const keys = await readDirectory<JsonIdempotencyKey>(recordsDir, 'idempotency', records.skipped);
  for (const {name, value} of keys) {
    const leaseUntil = new Date(value.lease_until);
    const expiresAt = new Date(value.expires_at);
    const valid =
      typeof value.fingerprint === 'string' &&
      typeof value.job_id === 'string' &&
      Number.isFinite(leaseUntil.getTime()) &&
      Number.isFinite(expiresAt.getTime());
    if (!valid) {
      records.skipped.push(`idempotency/${name}`);
      continue;
    }
    records.idempotencyKeys.push({
      keyHash: name.slice(0, -'.json'.length),
      record: {
        fingerprint: value.fingerprint,
        jobId: value.job_id,
        leaseUntil,
        expiresAt,
        completed: value.completed === true,
      },
    });
  }

  const quotas = await readDirectory<{used: number}>(recordsDir, 'quotas', records.skipped);
  for (const {name, value} of quotas) {
    const match = QUOTA_FILE.exec(name);
    if (!match || !Number.isInteger(value.used)) {
      records.skipped.push(`quotas/${name}`);
      continue;
    }
    records.quotaCounters.push({subject: match[1]!, day: match[2]!, used: value.used});
  }
  return records;
}

/**
 * A job of the JSON store in today's shape: no owner was recorded, a
 * finished job has no error and no lease, no warnings were given, the model
 * requested was the model run, and the prompt is kept once, on the job.
 * Parameters added since are null (left to OpenAI, as they were); parameters
 * since removed are dropped.
 */
export function upgradeJsonJob(stored: JsonJob): JobRecord {
  const parameters = Object.fromEntries(
    Object.keys(JobParametersSchema.shape).map(key => [
      key,
      (stored.parameters as Record<string, unknown>)[key] ?? null,
    ]),
  ) as JobParameters;
  parameters.requested_model = stored.parameters.requested_model ?? stored.parameters.model;
  parameters.allow_partial = stored.parameters.allow_partial ?? false;
  return {
    ...stored,
    owner: stored.owner ?? null,
    source_images: stored.source_images ?? [],
    parameters,
    metadata: stored.metadata ?? {},
    images: stored.images.map(({prompt: _prompt, ...image}) => image),
    failures: stored.failures ?? [],
    warnings: stored.warnings ?? [],
    error: stored.error ?? null,
    lease_until: stored.lease_until ?? null,
  };
}

function isJsonJob(value: JsonJob): boolean {
  return (
    typeof value.id === 'string' &&
    typeof value.created_at === 'string' &&
    typeof value.status === 'string' &&
    typeof value.parameters?.model === 'string' &&
    Array.isArray(value.images) &&
    value.images.every(image => typeof image?.id === 'string')
  );
}

/** The parsed `*.json` files of one records subdirectory; unreadable ones go to `skipped`. */
async function readDirectory<T>(
  recordsDir: string,
  subdirectory: string,
  skipped: string[],
): Promise<{name: string; value: T}[]> {
  const dir = path.join(recordsDir, subdirectory);
  let names: string[];
  try {
    names = (await fs.readdir(dir)).filter(name => name.endsWith('.json')).sort();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
  const read: ({name: string; value: T} | null)[] = Array.from({length: names.length}, () => null);
  let next = 0;
  const worker = async () => {
    while (next < names.length) {
      const index = next++;
      const name = names[index]!;
      try {
        const value = JSON.parse(await fs.readFile(path.join(dir, name), 'utf8')) as T;
        if (typeof value === 'object' && value !== null) read[index] = {name, value};
        else skipped.push(`${subdirectory}/${name}`);
      } catch (error) {
        // A file removed meanwhile is no record; one that does not parse is kept on disk and reported.
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') skipped.push(`${subdirectory}/${name}`);
      }
    }
  };
  await Promise.all(Array.from({length: Math.min(READ_CONCURRENCY, names.length)}, worker));
  return read.filter(entry => entry !== null);
}
