import type {Readable} from 'node:stream';
import type {UpstreamParameters} from './generation';
import type {ImageRecord, JobError, JobRecord, JobStatus, Usage} from './records';

/** One upstream call: at most the model's per-call image limit. */
export interface UpstreamRequest {
  model: string;
  prompt: string;
  n: number;
  parameters: UpstreamParameters;
  /** Stream the image (n is then 1), with up to this many partial images on the way (0-3). */
  partialImages?: number;
  /** Set for an edit: the images it works from, already checked. */
  edit?: {images: InputImage[]; mask?: InputImage; markup?: InputImage};
}

/** An image sent to OpenAI, as a file: its one copy in memory, sent as it is by every call. */
export interface InputImage {
  data: Blob;
  filename: string;
  contentType: string;
}

/** A rough image OpenAI sends while it works on a streamed call, base64 as it came. */
export interface PartialImage {
  partialImageIndex: number;
  b64: string;
  contentType: string;
}

export interface CallOptions {
  signal?: AbortSignal;
  /** Called with each partial image of a streamed call, in order. */
  onPartial?: (partial: PartialImage) => void;
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
    options?: CallOptions,
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
  /** Whether it can hold transparent pixels (an alpha channel, or PNG transparency). */
  alpha: boolean;
}

export interface ImageCodec {
  /** Null for anything that is not an image format we store. */
  inspect(data: Buffer, knownSha256?: string): ImageInfo | null;
  /** The image at exactly this size (cropped to its shape if need be), in its own format. */
  resize(data: Buffer, size: {width: number; height: number}): Promise<Buffer>;
  /** Whether any pixel is less than fully opaque (its pixels decoded: slow, for small overlays only). */
  hasTransparentPixels(data: Buffer): Promise<boolean>;
}

/** Reads objects in other Cloud Storage buckets: the gs:// sources an edit may name. */
export interface ForeignObjects {
  /** The object's bytes, or null when there is none; rejects past `maxBytes`. */
  read(bucket: string, path: string, maxBytes: number): Promise<Buffer | null>;
}

/** What a store knows of one object without reading it. */
export interface ObjectInfo {
  path: string;
  bytes: number;
  contentType: string;
  /** The metadata it was written with. */
  metadata: Record<string, string>;
  createdAt: Date;
}

/** Bytes by path. Paths are built by the use cases, never from caller input. */
export interface ObjectStore {
  /**
   * Writes the object; fails if another object exists there, so nothing is
   * overwritten. Writing the same bytes again (a retry of a write whose answer
   * was lost) succeeds.
   */
  put(
    path: string,
    data: Buffer,
    info: {contentType: string; metadata: Record<string, string>},
  ): Promise<void>;
  read(path: string): Promise<Readable | null>;
  /** What is known of the object, or null when there is none. */
  stat(path: string): Promise<ObjectInfo | null>;
  /** Returns false when there was nothing to delete. */
  delete(path: string): Promise<boolean>;
  /** The objects under a prefix, in lexicographic order of path. */
  list(prefix: string): Promise<ObjectInfo[]>;
  /**
   * Local disk only: removes what writes cut short (a killed process) left
   * under a prefix, last written before `olderThan`; returns what it removed.
   */
  removeAbandonedWrites?(prefix: string, olderThan: Date): Promise<string[]>;
  /** Cloud Storage only: a time-limited URL that reads the object without credentials. */
  signedReadUrl?(path: string, ttlSeconds: number): Promise<{url: string; expiresAt: Date}>;
  /** Cloud Storage only: the object's public URL (works when the bucket allows it). */
  publicUrl?(path: string): string;
  /** Cloud Storage only: gs://bucket/path, for GCP callers that read the object directly. */
  uri?(path: string): string;
  /** Proves a write would succeed, where that is cheap (a local disk); readiness calls it. */
  checkWritable?(): Promise<void>;
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
  /** Only this owner's jobs; undefined for everyone's. */
  owner?: string;
  source?: JobRecord['source'];
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

/** What the store holds for the job an idempotency key points to. */
export type KeyJobState = 'none' | 'running' | 'stopped' | 'finished' | 'failed';

export type ClaimOutcome =
  | {outcome: 'claimed'; jobId: string; recovered: boolean}
  | {outcome: 'completed'; jobId: string}
  | {outcome: 'in_progress'; leaseUntil: Date}
  /** The key's job is running past its lease: its run stopped, and the job must be settled first. */
  | {outcome: 'stopped'; jobId: string}
  | {outcome: 'mismatch'};

/** A daily quota reservation: `amount` images of `subject` on `day`, made for one job. */
export interface QuotaReservation {
  subject: string;
  /** UTC day, YYYY-MM-DD. */
  day: string;
  jobId: string;
  amount: number;
  createdAt: string;
}

/**
 * Jobs and images by id, idempotency keys and quotas. Every write is atomic.
 * A write whose outcome a store cannot know (a deadline, a lost connection)
 * rejects with an OutcomeUnknownError; every write is safe to repeat, so an
 * unknown outcome is settled by reading or by writing again.
 */
export interface MetadataStore {
  /** Records a `running` job before any upstream call; fails if the id exists. */
  createJob(job: JobRecord): Promise<void>;
  /**
   * Atomically turns a `running` job into its final record (completed or
   * partial), writes each of its images, and settles its quota reservation
   * (if any) for good. False, and nothing written, when the job is not
   * `running` any more (the reconciler failed it).
   */
  completeJob(job: JobRecord): Promise<boolean>;
  /** Marks a `running` job failed, with no images; false when it is not running. */
  failJob(id: string, error: JobError, updatedAt: string): Promise<boolean>;
  getJob(id: string): Promise<JobRecord | null>;
  getImage(id: string): Promise<ImageRecord | null>;
  /** Newest first, ties broken by id (descending). */
  listJobs(query: JobQuery): Promise<JobPage>;
  /** `running` jobs whose lease ended before `now`, oldest first. */
  listStaleJobs(now: Date, limit: number): Promise<JobRecord[]>;
  /** Removes the image record and drops it from its job; null if it was not there. */
  deleteImage(id: string, updatedAt: string): Promise<ImageRecord | null>;
  /** Removes the job and every image record of it; null if it was not there. */
  deleteJob(id: string): Promise<JobRecord | null>;
  /**
   * Atomically decides what a request with this idempotency key does (see
   * `decideClaim`): given the record a new run would write, run, replay a
   * finished job, wait for one in progress, or refuse a reused key.
   */
  claimIdempotencyKey(keyHash: string, claim: IdempotencyRecord, now: Date): Promise<ClaimOutcome>;
  /** Marks the key's job done, so it is replayed even if the job is later deleted. */
  completeIdempotencyKey(keyHash: string, jobId: string): Promise<void>;
  /** Frees a key whose job failed, so a retry runs again. */
  releaseIdempotencyKey(keyHash: string, jobId: string): Promise<void>;
  /**
   * Atomically records the reservation and adds it to the subject's count for
   * the day if that stays within `limit`; returns whether it did and the count
   * after. A reservation already recorded for the job is not counted twice.
   */
  reserveQuota(reservation: QuotaReservation, limit: number): Promise<{ok: boolean; used: number}>;
  /** Gives a job's reservation back, once however often it is called. */
  releaseQuota(reservation: QuotaReservation): Promise<void>;
  /**
   * Reservations made before `before` and not settled by their job's
   * completion: the reconciler gives back those whose job failed or never was.
   */
  listQuotaReservations(before: Date, limit: number): Promise<QuotaReservation[]>;
  /** Cheap round trip to prove the store answers (readiness). */
  ping(): Promise<void>;
  /** Proves a write would succeed, where that is cheap (a local disk); readiness calls it. */
  checkWritable?(): Promise<void>;
}
