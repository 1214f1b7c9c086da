import {randomUUID} from 'node:crypto';
import {AppError, isAppError} from '../errors';
import type {GenerateCommand} from '../domain/generate-request';
import {MODELS, splitIntoCalls} from '../domain/models';
import {inspectImage} from '../domain/image-info';
import type {ImageRecord, JobRecord, Usage} from '../domain/records';
import type {ImageProvider, ImageStore, MetadataStore, ProviderRequest} from '../ports';

export interface GenerateDeps {
  provider: ImageProvider;
  images: ImageStore;
  metadata: MetadataStore;
  now?: () => Date;
}

/** Where an image's bytes live; ids are ours, never the caller's. */
export function objectPathFor(jobId: string, index: number, imageId: string, extension: string): string {
  return `images/${jobId}/${String(index).padStart(3, '0')}-${imageId}.${extension}`;
}

/**
 * Runs one generation job: upstream calls in parallel, every image stored as
 * soon as it arrives, then the job and image records in one atomic write.
 * Objects are written before records, so a record never points at a missing
 * object; on any failure the objects this job wrote are removed again.
 */
export async function generateImages(
  deps: GenerateDeps,
  command: GenerateCommand,
  signal?: AbortSignal,
): Promise<JobRecord> {
  const now = deps.now ?? (() => new Date());
  const jobId = randomUUID();
  const createdAt = now().toISOString();
  const rules = MODELS[command.model];
  const calls = splitIntoCalls(command.count, rules.maxImagesPerCall);

  // First failure cancels the calls still in flight; their cost is sunk either way,
  // but the caller gets an answer sooner and no further work is stored.
  const abort = new AbortController();
  const callSignal = signal ? AbortSignal.any([signal, abort.signal]) : abort.signal;
  const writtenPaths: string[] = [];
  const images: ImageRecord[] = new Array<ImageRecord>(command.count);
  const usages: Usage[] = [];
  let upstreamMs = 0;

  const runCall = async (n: number, firstIndex: number): Promise<void> => {
    const started = performance.now();
    const result = await deps.provider.generate(providerRequest(command, n), callSignal);
    upstreamMs = Math.max(upstreamMs, performance.now() - started);
    usages.push(result.usage);
    await Promise.all(
      result.images.map(async (generated, offset) => {
        const index = firstIndex + offset;
        const info = inspectImage(generated.data);
        if (!info) throw new AppError('UPSTREAM_ERROR', 'OpenAI returned data that is not a PNG, JPEG or WebP image');
        const id = randomUUID();
        const path = objectPathFor(jobId, index, id, info.extension);
        callSignal.throwIfAborted();
        writtenPaths.push(path);
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
  };

  let firstIndex = 0;
  const work = calls.map(n => {
    const call = runCall(n, firstIndex).catch(error => {
      abort.abort(error);
      throw error;
    });
    firstIndex += n;
    return call;
  });
  // Wait for every call to settle, so no upload lands after the clean-up below.
  const settled = await Promise.allSettled(work);
  const failure = settled.find(s => s.status === 'rejected');
  if (failure) {
    await removeObjects(deps.images, writtenPaths);
    throw failure.reason;
  }

  const completedAt = now().toISOString();
  const job: JobRecord = {
    id: jobId,
    status: 'completed',
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
    },
    metadata: command.metadata,
    usage: sumUsage(usages),
    images,
    created_at: createdAt,
    updated_at: completedAt,
    completed_at: completedAt,
    upstream_ms: Math.round(upstreamMs),
  };
  try {
    await deps.metadata.saveJob(job);
  } catch (error) {
    await removeObjects(deps.images, writtenPaths);
    throw storageError('Could not record the job', error);
  }
  return job;
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

/** Best effort: a failure here is logged by the caller's error, not raised over it. */
async function removeObjects(store: ImageStore, paths: string[]): Promise<void> {
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
