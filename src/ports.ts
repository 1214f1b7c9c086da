import type {Readable} from 'node:stream';
import type {ModelId, OutputFormat} from './domain/models';
import type {ImageRecord, JobRecord, JobStatus, Usage} from './domain/records';

/** One upstream call: at most the model's per-call image limit. */
export interface ProviderRequest {
  model: ModelId;
  prompt: string;
  n: number;
  size: string;
  quality?: string;
  style?: string;
  background?: 'transparent' | 'opaque' | 'auto';
  outputFormat?: OutputFormat;
  outputCompression?: number;
  moderation?: 'low' | 'auto';
  user?: string;
}

export interface GeneratedImage {
  data: Buffer;
  revisedPrompt: string | null;
  /** Computed while decoding, when the provider can; saves hashing the bytes again. */
  sha256?: string;
}

export interface ProviderResult {
  images: GeneratedImage[];
  usage: Usage;
  /**
   * Lets the provider reuse the images' memory. Call it once, when nothing
   * reads or writes from `images` any more (every store call has settled).
   */
  release(): void;
}

/**
 * An upstream answer whose body has not been read yet. Reading it is where the
 * memory and CPU go, so callers can bound how many are read at once while any
 * number of calls wait upstream.
 */
export interface PendingImages {
  read(): Promise<ProviderResult>;
}

export interface ImageProvider {
  /**
   * Rejects with an AppError (CONTENT_POLICY_VIOLATION, RATE_LIMIT_EXCEEDED,
   * UPSTREAM_*), as does read(). `onRequestSent` runs once the request has
   * left, while the call only waits; at the latest when the answer starts.
   */
  generate(
    request: ProviderRequest,
    signal?: AbortSignal,
    onRequestSent?: () => void,
  ): Promise<PendingImages>;
  readonly configured: boolean;
}

export interface StoredObjectInfo {
  size: number;
  contentType: string;
  metadata: Record<string, string>;
}

export interface PutInfo {
  contentType: string;
  metadata: Record<string, string>;
}

/** Bytes by path. Paths are built by the use cases, never from caller input. */
export interface ImageStore {
  readonly kind: string;
  /** Writes the object; fails if it already exists, so nothing is overwritten. */
  put(
    path: string,
    data: Buffer,
    info: {contentType: string; metadata: Record<string, string>},
  ): Promise<void>;
  stat(path: string): Promise<StoredObjectInfo | null>;
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

/** A request to own an idempotency key while its job runs. */
export interface IdempotencyClaim {
  /** sha256 of the caller's key: keys are never stored as given. */
  keyHash: string;
  /** sha256 of the request's parameters: a key may not be reused for another request. */
  fingerprint: string;
  jobId: string;
  /** Until then the claim is held; after it a crashed run may be taken over. */
  leaseUntil: Date;
  /** When the key is forgotten (Firestore TTL deletes it some time after). */
  expiresAt: Date;
}

export type ClaimOutcome =
  | {outcome: 'claimed'; jobId: string; recovered: boolean}
  | {outcome: 'completed'; jobId: string}
  | {outcome: 'in_progress'; leaseUntil: Date}
  | {outcome: 'mismatch'};

/** Jobs and images by id. */
export interface MetadataStore {
  readonly kind: string;
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
   * Atomically decides what a request with this idempotency key does: run
   * (a new key, an expired one, or a crashed run whose lease ran out), replay
   * a completed job, wait for one in progress, or refuse a reused key.
   */
  claimIdempotencyKey(claim: IdempotencyClaim, now: Date): Promise<ClaimOutcome>;
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
  /** Cheap round trip to prove the store answers (health checks). */
  ping(): Promise<void>;
}
