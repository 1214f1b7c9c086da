import {createHash} from 'node:crypto';
import type {Bucket, Storage} from '@google-cloud/storage';
import {validationError} from '../../core/errors';
import type {Readable} from 'node:stream';
import type {ForeignObjects, ObjectInfo, ObjectStore} from '../../core/ports';

/** Objects are immutable once written (ids are never reused), so caches may keep them for good. */
const IMMUTABLE_CACHE_CONTROL = 'public, max-age=31536000, immutable';
const SVG = 'image/svg+xml';

const READ_ATTEMPTS = 3;

function isRetryable(error: unknown): boolean {
  const status = statusOf(error);
  return status === undefined || status === 408 || status === 429 || status >= 500;
}

function statusOf(error: unknown): number | undefined {
  const code = (error as {code?: unknown} | undefined)?.code;
  return typeof code === 'number' ? code : undefined;
}

export interface GcsObjectStoreOptions {
  /** IAM signBlob endpoint, when not the default (tests point it at a local server). */
  signingEndpoint?: string;
  /** Base for public URLs, e.g. a CDN in front of the bucket. */
  publicBaseUrl?: string;
  /** The same bucket through a client with automatic retries off, for downloads. */
  readBucket?: Bucket;
}

type PutInfo = Parameters<ObjectStore['put']>[2];

/** Image bytes in a Cloud Storage bucket. */
export class GcsObjectStore implements ObjectStore {
  constructor(
    private readonly bucket: Bucket,
    private readonly options: GcsObjectStoreOptions = {},
  ) {}

  async put(objectPath: string, data: Buffer, info: PutInfo): Promise<void> {
    // ifGenerationMatch: 0 makes the write create-only, which also lets the
    // client retry it safely: a retry can never overwrite another object.
    // Sending the MD5 (native, fast) has Cloud Storage verify the bytes, and
    // spares the client its own CRC32C, which it computes in JavaScript.
    const md5Hash = createHash('md5').update(data).digest('base64');
    try {
      await this.bucket.file(objectPath).save(data, {
        resumable: false,
        contentType: info.contentType,
        metadata: {
          contentType: info.contentType,
          cacheControl: IMMUTABLE_CACHE_CONTROL,
          // An SVG opened from its URL would run its scripts in the bucket's origin; downloaded, it cannot.
          // (An <img> ignores this and shows it.)
          ...(info.contentType === SVG ? {contentDisposition: 'attachment'} : {}),
          metadata: info.metadata,
          md5Hash,
        },
        validation: false,
        preconditionOpts: {ifGenerationMatch: 0},
      });
    } catch (error) {
      // A write whose answer was lost, repeated (by the client or the caller), finds
      // its own object: the same bytes are there, which is success.
      if (statusOf(error) !== 412) throw error;
      const [meta] = await this.bucket.file(objectPath).getMetadata();
      if (meta.md5Hash !== md5Hash) throw error;
    }
  }

  /**
   * Whether the runtime account may write and delete objects here, asked of
   * IAM (no object is written): a read-only role answers the readiness check
   * before a generation is paid for and then cannot be stored.
   */
  async checkWritable(): Promise<void> {
    const needed = ['storage.objects.create', 'storage.objects.delete'];
    const [granted] = await this.bucket.iam.testPermissions(needed);
    const missing = needed.filter(permission => !granted[permission]);
    if (missing.length > 0) {
      throw Object.assign(new Error(`The runtime account lacks ${missing.join(', ')}`), {
        code: `missing ${missing.join(' ')}`,
      });
    }
  }

  async stat(objectPath: string): Promise<ObjectInfo | null> {
    try {
      const [meta] = await this.bucket.file(objectPath).getMetadata();
      return infoOf(objectPath, meta);
    } catch (error) {
      if (statusOf(error) === 404) return null;
      throw error;
    }
  }

  /**
   * Streams the object. The client's own retries are off for downloads (a
   * retried streamed download can fail with an unhandled rejection, which
   * would end the instance), so we retry here, and only until the response
   * headers arrive, before any byte has gone to our caller.
   */
  async read(objectPath: string): Promise<Readable | null> {
    const bucket = this.options.readBucket ?? this.bucket;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.openOnce(bucket, objectPath);
      } catch (error) {
        if (attempt >= READ_ATTEMPTS || !isRetryable(error)) throw error;
        await new Promise(resolve => setTimeout(resolve, 100 * 2 ** attempt * (0.5 + Math.random())));
      }
    }
  }

  private openOnce(bucket: Bucket, objectPath: string): Promise<Readable | null> {
    const stream = bucket.file(objectPath).createReadStream();
    // Wait for the response headers so a missing object is a null, not a broken stream.
    return new Promise<Readable | null>((resolve, reject) => {
      const onError = (error: unknown) => {
        stream.destroy();
        if (statusOf(error) === 404) resolve(null);
        else reject(error);
      };
      stream.once('error', onError);
      stream.once('response', (response: {statusCode?: number; status?: number}) => {
        const status = response.statusCode ?? response.status ?? 200;
        if (status >= 400) return; // the error event follows with the parsed body
        stream.off('error', onError);
        resolve(stream);
      });
      stream.read(0); // the client starts the request on the first read
    });
  }

  async delete(objectPath: string): Promise<boolean> {
    try {
      await this.bucket.file(objectPath).delete();
      return true;
    } catch (error) {
      if (statusOf(error) === 404) return false;
      throw error;
    }
  }

  /**
   * A V4 signed URL. With a key file the client signs locally; on Cloud Run it
   * has no key and signs through IAM signBlob as its own service account
   * (which needs iam.serviceAccountTokenCreator on itself).
   */
  async signedReadUrl(objectPath: string, ttlSeconds: number): Promise<{url: string; expiresAt: Date}> {
    const expiresAt = new Date(Date.now() + ttlSeconds * 1000);
    const [url] = await this.bucket.file(objectPath).getSignedUrl({
      version: 'v4',
      action: 'read',
      expires: expiresAt,
      ...(this.options.signingEndpoint ? {signingEndpoint: this.options.signingEndpoint} : {}),
    });
    return {url, expiresAt};
  }

  publicUrl(objectPath: string): string {
    const encoded = objectPath.split('/').map(encodeURIComponent).join('/');
    const base = this.options.publicBaseUrl ?? `https://storage.googleapis.com/${this.bucket.name}`;
    return `${base}/${encoded}`;
  }

  uri(objectPath: string): string {
    return `gs://${this.bucket.name}/${objectPath}`;
  }

  async list(prefix: string): Promise<ObjectInfo[]> {
    const [files] = await this.bucket.getFiles({prefix, autoPaginate: true});
    return files.map(file => infoOf(file.name, file.metadata)).sort((a, b) => (a.path < b.path ? -1 : 1));
  }
}

/** The object resource Cloud Storage answers with, as the port describes an object. */
function infoOf(
  path: string,
  meta: {
    size?: string | number;
    contentType?: string;
    metadata?: Record<string, unknown>;
    timeCreated?: string;
  },
): ObjectInfo {
  const custom: Record<string, string> = {};
  for (const [key, value] of Object.entries(meta.metadata ?? {})) {
    if (value !== null && value !== undefined) custom[key] = String(value);
  }
  return {
    path,
    bytes: Number(meta.size ?? 0),
    contentType: meta.contentType ?? 'application/octet-stream',
    metadata: custom,
    createdAt: new Date(meta.timeCreated ?? 0),
  };
}

/**
 * How the deadline wrapper tells a read from a write, and an open outcome
 * from a failure: no answer at all, or a server error, after the request went out.
 */
export const GCS_DEADLINES = {
  name: 'object store',
  reads: new Set<keyof ObjectStore>(['read', 'stat', 'list', 'signedReadUrl', 'checkWritable']),
  writes: new Set<keyof ObjectStore>(['put', 'delete']),
  outcomeUnknown: (error: unknown) => {
    const status = statusOf(error);
    return status === undefined || status >= 500;
  },
};

/** Reads objects of other buckets (edit sources), through the same client. */
export class GcsForeignObjects implements ForeignObjects {
  constructor(private readonly storage: Storage) {}

  async read(bucket: string, path: string, maxBytes: number): Promise<Buffer | null> {
    const file = this.storage.bucket(bucket).file(path);
    try {
      const [meta] = await file.getMetadata();
      if (Number(meta.size ?? 0) > maxBytes) {
        throw validationError([{field: `gs://${bucket}/${path}`, message: `is over ${maxBytes} bytes`}]);
      }
      const [data] = await file.download();
      return data;
    } catch (error) {
      if (statusOf(error) === 404) return null;
      throw error;
    }
  }
}
