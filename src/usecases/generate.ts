import {randomUUID} from 'node:crypto';
import {AppError, isAppError} from '../errors';
import type {GenerateCommand} from '../domain/generate-request';
import {MODELS, splitIntoCalls} from '../domain/models';
import {inspectImage, loadImageInspector} from '../domain/image-info';
import type {ImageRecord, JobFailure, JobRecord, Usage} from '../domain/records';
import type {ImageProvider, ImageStore, MetadataStore, ProviderRequest, ProviderResult} from '../ports';
import {Limiter} from './limiter';

const UNBOUNDED = new Limiter(Number.POSITIVE_INFINITY);

export interface GenerateDeps {
  provider: ImageProvider;
  images: ImageStore;
  metadata: MetadataStore;
  /**
   * Bounds how many upstream answers are decoded and stored at once per
   * instance: calls wait upstream in any number, but each answer being read
   * holds its images in memory until they are stored.
   */
  decodeSlots?: Limiter;
  /** Gets the stores ready while the upstream call waits (see Services.prepareStores). */
  prepareStores?: () => void;
  now?: () => Date;
}

export interface GenerateOptions {
  /** Fixed up front when the job is claimed under an idempotency key. */
  jobId?: string;
  signal?: AbortSignal;
}

/** Where an image's bytes live; ids are ours, never the caller's. */
export function objectPathFor(jobId: string, index: number, imageId: string, extension: string): string {
  return `images/${jobId}/${String(index).padStart(3, '0')}-${imageId}.${extension}`;
}

export function jobPrefix(jobId: string): string {
  return `images/${jobId}/`;
}

interface CallOutcome {
  firstIndex: number;
  count: number;
  usage: Usage;
  upstreamMs: number;
}

/**
 * Runs one generation job: upstream calls in parallel, every image stored as
 * soon as it arrives, then the job and image records in one atomic write.
 * Objects are written before records, so a record never points at a missing
 * object; on failure the objects this job wrote are removed again. With
 * `allowPartial`, failed calls are reported in the job instead, as long as at
 * least one image was made.
 */
export async function generateImages(
  deps: GenerateDeps,
  command: GenerateCommand,
  options: GenerateOptions = {},
): Promise<JobRecord> {
  const now = deps.now ?? (() => new Date());
  const jobId = options.jobId ?? randomUUID();
  const createdAt = now().toISOString();
  const calls = splitIntoCalls(command.count, MODELS[command.model].maxImagesPerCall);

  // Without allowPartial the first failure cancels the calls still in flight:
  // the caller gets an answer sooner and nothing more is stored.
  const abort = new AbortController();
  const callSignal = options.signal ? AbortSignal.any([options.signal, abort.signal]) : abort.signal;
  const images = Array.from<ImageRecord | undefined>({length: command.count});

  // What handling the answer needs, loaded while the request is out (a no-op once loaded).
  const whileWaiting = () => {
    loadImageInspector();
    deps.prepareStores?.();
  };

  const runCall = async (n: number, firstIndex: number): Promise<CallOutcome> => {
    const started = performance.now();
    const pending = await deps.provider.generate(providerRequest(command, n), callSignal, whileWaiting);
    const upstreamMs = performance.now() - started;
    return (deps.decodeSlots ?? UNBOUNDED).run(async () => {
      const result = await pending.read();
      try {
        return await storeCall(result, n, firstIndex, upstreamMs);
      } finally {
        // storeCall settles only after every upload of this call has.
        result.release();
      }
    });
  };

  const storeCall = async (
    result: ProviderResult,
    n: number,
    firstIndex: number,
    upstreamMs: number,
  ): Promise<CallOutcome> => {
    const written: string[] = [];
    const outcomes = await Promise.allSettled(
      result.images.map(async (generated, offset) => {
        const index = firstIndex + offset;
        const info = inspectImage(generated.data, generated.sha256);
        if (!info)
          throw new AppError('UPSTREAM_ERROR', 'OpenAI returned data that is not a PNG, JPEG or WebP image');
        const id = randomUUID();
        const path = objectPathFor(jobId, index, id, info.extension);
        callSignal.throwIfAborted();
        written.push(path);
        await deps.images
          .put(path, generated.data, {
            contentType: info.contentType,
            metadata: {sha256: info.sha256, job_id: jobId, image_id: id, model: command.model},
          })
          .catch(error => {
            throw storageError('Could not store a generated image', error);
          });
        images[index] = {
          id,
          job_id: jobId,
          index,
          object_path: path,
          content_type: info.contentType,
          bytes: info.bytes,
          sha256: info.sha256,
          width: info.width,
          height: info.height,
          model: command.model,
          size: command.size,
          prompt: command.prompt,
          revised_prompt: generated.revisedPrompt,
          created_at: now().toISOString(),
        };
      }),
    );
    const failure = outcomes.find(outcome => outcome.status === 'rejected');
    if (failure) {
      // Every upload of this call has settled: nothing lands after this clean-up.
      await removeObjects(deps.images, written);
      for (let i = firstIndex; i < firstIndex + n; i++) images[i] = undefined;
      throw failure.reason;
    }
    return {firstIndex, count: n, usage: result.usage, upstreamMs};
  };

  let firstIndex = 0;
  const work = calls.map(n => {
    const call = runCall(n, firstIndex).catch(error => {
      if (!command.allowPartial) abort.abort(error);
      throw error;
    });
    firstIndex += n;
    return call;
  });
  // Wait for every call to settle, so no upload lands after a clean-up.
  const settled = await Promise.allSettled(work);
  const succeeded = settled.flatMap(s => (s.status === 'fulfilled' ? [s.value] : []));
  const failed = settled.flatMap((s, i) =>
    s.status === 'rejected' ? [{call: i, reason: s.reason as unknown}] : [],
  );
  const stored = images.filter((image): image is ImageRecord => image !== undefined);

  if (failed.length > 0 && (!command.allowPartial || stored.length === 0)) {
    await removeObjects(
      deps.images,
      stored.map(image => image.object_path),
    );
    throw pickError(failed.map(f => f.reason));
  }

  let offset = 0;
  const callStarts = calls.map(n => {
    const start = offset;
    offset += n;
    return start;
  });
  const failures: JobFailure[] = failed.map(({call, reason}) => {
    const error = isAppError(reason) ? reason : storageError('Generation failed', reason);
    return {first_index: callStarts[call]!, count: calls[call]!, code: error.code, error: error.message};
  });

  const completedAt = now().toISOString();
  const job: JobRecord = {
    id: jobId,
    status: failures.length > 0 ? 'partial' : 'completed',
    prompt: command.prompt,
    source: command.source,
    parameters: {
      count: command.count,
      model: command.model,
      size: command.size,
      quality: command.quality ?? null,
      style: command.style ?? null,
      background: command.background ?? null,
      output_format: command.outputFormat ?? null,
      output_compression: command.outputCompression ?? null,
      moderation: command.moderation ?? null,
      user: command.user ?? null,
      allow_partial: command.allowPartial,
    },
    metadata: command.metadata,
    usage: sumUsage(succeeded.map(s => s.usage)),
    images: stored,
    failures,
    created_at: createdAt,
    updated_at: completedAt,
    completed_at: completedAt,
    upstream_ms: Math.round(Math.max(0, ...succeeded.map(s => s.upstreamMs))),
  };
  try {
    await deps.metadata.saveJob(job);
  } catch (error) {
    await removeObjects(
      deps.images,
      stored.map(image => image.object_path),
    );
    throw storageError('Could not record the job', error);
  }
  return job;
}

/** The most useful error to report when calls failed differently: the caller's fault first. */
function pickError(reasons: unknown[]): unknown {
  const rank = (reason: unknown) => {
    if (!isAppError(reason)) return 9;
    const order = ['CONTENT_POLICY_VIOLATION', 'VALIDATION_ERROR', 'RATE_LIMIT_EXCEEDED', 'SERVICE_ERROR'];
    const position = order.indexOf(reason.code);
    return position === -1 ? order.length : position;
  };
  return [...reasons].sort((a, b) => rank(a) - rank(b))[0];
}

function providerRequest(command: GenerateCommand, n: number): ProviderRequest {
  const request: ProviderRequest = {model: command.model, prompt: command.prompt, n, size: command.size};
  if (command.quality !== undefined) request.quality = command.quality;
  if (command.style !== undefined) request.style = command.style;
  if (command.background !== undefined) request.background = command.background;
  if (command.outputFormat !== undefined) request.outputFormat = command.outputFormat;
  if (command.outputCompression !== undefined) request.outputCompression = command.outputCompression;
  if (command.moderation !== undefined) request.moderation = command.moderation;
  if (command.user !== undefined) request.user = command.user;
  return request;
}

export function storageError(message: string, cause: unknown): AppError {
  return isAppError(cause) ? cause : new AppError('STORAGE_ERROR', message, {cause});
}

/** Best effort: the error that led here is the one reported, not a clean-up failure. */
export async function removeObjects(store: ImageStore, paths: string[]): Promise<void> {
  await Promise.allSettled(paths.map(path => store.delete(path)));
}

/** Adds token counts across upstream calls; null when no call reported usage. */
export function sumUsage(usages: Usage[]): Usage {
  const reported = usages.filter((u): u is Record<string, unknown> => u !== null);
  if (reported.length === 0) return null;
  const add = (a: unknown, b: unknown): unknown => {
    if (typeof a === 'number' && typeof b === 'number') return a + b;
    if (isPlainObject(a) && isPlainObject(b)) {
      const out: Record<string, unknown> = {...a};
      for (const [key, value] of Object.entries(b)) out[key] = key in a ? add(a[key], value) : value;
      return out;
    }
    return b ?? a;
  };
  return reported.reduce((total, u) => add(total, u) as Record<string, unknown>);
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
