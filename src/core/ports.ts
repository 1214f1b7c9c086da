import type {Readable} from 'node:stream';
import type {UpstreamParameters} from './generation';
import type {ImageRecord, JobRecord, JobStatus, Usage} from './records';

/** One upstream call: at most the model's per-call image limit. */
export interface UpstreamRequest {
  model: string;
  prompt: string;
  n: number;
  parameters: UpstreamParameters;
}

export interface GeneratedImage {
  data: Buffer;
  revisedPrompt: string | null;
  /** Computed while decoding, when the provider can; saves hashing the bytes again. */
  sha256?: string;
}

export interface GeneratedImages {
  images: GeneratedImage[];
  usage: Usage;
}

export interface ImageProvider {
  readonly configured: boolean;
  /**
   * Makes one upstream call and hands its images to `store`, whose result it
   * returns. The images' memory belongs to the provider: read it only until
   * `store` settles. Rejects with an AppError (CONTENT_POLICY_VIOLATION,
   * RATE_LIMIT_EXCEEDED, UPSTREAM_*, ...).
   */
  generate<T>(
    request: UpstreamRequest,
    store: (result: GeneratedImages) => Promise<T>,
    signal?: AbortSignal,
  ): Promise<T>;
}

/** What an image's header says, and its hash. */
export interface ImageInfo {
  contentType: string;
  extension: string;
  width: number;
  height: number;
  bytes: number;
  sha256: string;
}

export interface ImageCodec {
  /** Null for anything that is not an image format we store. */
  inspect(data: Buffer, knownSha256?: string): ImageInfo | null;
  /** The image at exactly this size (cropped to its shape if need be), in its own format. */
  resize(data: Buffer, size: {width: number; height: number}): Promise<Buffer>;
}

/** Bytes by path. Paths are built by the use cases, never from caller input. */
export interface ObjectStore {
  /** Writes the object; fails if it already exists, so nothing is overwritten. */
  put(
    path: string,
    data: Buffer,
    info: {contentType: string; metadata: Record<string, string>},
  ): Promise<void>;
  read(path: string): Promise<Readable | null>;
  /** Returns false when there was nothing to delete. */
  delete(path: string): Promise<boolean>;
  /** Object paths under a prefix, in lexicographic order. */
  list(prefix: string): Promise<string[]>;
  /** Cloud Storage only: a time-limited URL that reads the object without credentials. */
  signedReadUrl?(path: string, ttlSeconds: number): Promise<{url: string; expiresAt: Date}>;
  /** Cloud Storage only: the object's public URL (works when the bucket allows it). */
  publicUrl?(path: string): string;
  /** Cloud Storage only: gs://bucket/path, for GCP callers that read the object directly. */
  uri?(path: string): string;
}

/** Position in the newest-first job order: the last job of a page. */
export interface JobCursor {
  createdAt: string;
  id: string;
}

export interface JobQuery {
  limit: number;
  after?: JobCursor;
  status?: JobStatus;
  metadata?: {key: string; value: string};
}

export interface JobPage {
  jobs: JobRecord[];
  /** Set when more jobs may follow. */
  next: JobCursor | null;
}

/** What is kept under an idempotency key (by the sha256 of the key: keys are never stored as given). */
export interface IdempotencyRecord {
  /** sha256 of the request's parameters: a key may not be reused for another request. */
  fingerprint: string;
  jobId: string;
  /** Until then the claim is held; after it a crashed run may be taken over. */
  leaseUntil: Date;
  /** When the key is forgotten (Firestore TTL deletes it some time after). */
  expiresAt: Date;
  completed: boolean;
}

export type ClaimOutcome =
  | {outcome: 'claimed'; jobId: string; recovered: boolean}
  | {outcome: 'completed'; jobId: string}
  | {outcome: 'in_progress'; leaseUntil: Date}
  | {outcome: 'mismatch'};

/** Jobs and images by id, idempotency keys and quotas. */
export interface MetadataStore {
  /** Writes a job and each of its images atomically; fails if any of them exists. */
  saveJob(job: JobRecord): Promise<void>;
  getJob(id: string): Promise<JobRecord | null>;
  getImage(id: string): Promise<ImageRecord | null>;
  /** Newest first, ties broken by id (descending). */
  listJobs(query: JobQuery): Promise<JobPage>;
  /** Removes the image record and drops it from its job; null if it was not there. */
  deleteImage(id: string, updatedAt: string): Promise<ImageRecord | null>;
  /** Removes the job and every image record of it; null if it was not there. */
  deleteJob(id: string): Promise<JobRecord | null>;
  /**
   * Atomically decides what a request with this idempotency key does (see
   * `decideClaim`): given the record a new run would write, run, replay a
   * completed job, wait for one in progress, or refuse a reused key.
   */
  claimIdempotencyKey(keyHash: string, claim: IdempotencyRecord, now: Date): Promise<ClaimOutcome>;
  /** Marks the key's job done, so it is replayed even if the job is later deleted. */
  completeIdempotencyKey(keyHash: string, jobId: string): Promise<void>;
  /** Frees a key whose job failed, so a retry runs again. */
  releaseIdempotencyKey(keyHash: string, jobId: string): Promise<void>;
  /**
   * Atomically adds `amount` to a caller's count for a day if it stays within
   * `limit`; returns whether it did and the count after.
   */
  reserveQuota(
    subject: string,
    day: string,
    amount: number,
    limit: number,
  ): Promise<{ok: boolean; used: number}>;
  /** Gives back a reservation whose generation failed. */
  releaseQuota(subject: string, day: string, amount: number): Promise<void>;
  /** Cheap round trip to prove the store answers (readiness). */
  ping(): Promise<void>;
}
