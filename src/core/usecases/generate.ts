import {randomUUID} from 'node:crypto';
import {AppError, isAppError, isOutcomeUnknown, storageCall, storageError} from '../errors';
import {
  UPSTREAM_PARAMETER_NAMES,
  type GenerateCommand,
  type RunPlan,
  type UpstreamParameters,
} from '../generation';
import {splitIntoCalls} from '../models';
import type {
  GeneratedImage,
  GeneratedImages,
  ImageCodec,
  ImageProvider,
  MetadataStore,
  ObjectStore,
  UpstreamRequest,
} from '../ports';
import type {ImageRecord, JobFailure, JobParameters, JobRecord, Usage} from '../records';
import {objectPathFor} from '../ids';
import type {EditSourceDeps, ResolvedInputs} from './edit-inputs';

export interface GenerateDeps extends EditSourceDeps {
  provider: ImageProvider;
  objects: ObjectStore;
  metadata: MetadataStore;
  codec: ImageCodec;
  now?: () => Date;
}

export interface GenerateOptions {
  /** The job's id, fixed up front (its quota reservation and idempotency key name it). */
  jobId: string;
  /** Who the job belongs to. */
  owner: string | null;
  /** How long the run may take before the reconciler may take what it left. */
  leaseMs: number;
  signal?: AbortSignal;
  /** Told as the job goes (for a caller watching a stream); must not throw. */
  onEvent?: (event: GenerationEvent) => void;
  /** An edit's inputs, read and checked (see resolveEditInputs). */
  inputs?: ResolvedInputs;
}

/** What happens to a job while it runs, in order for each image. */
export type GenerationEvent =
  /** The job is recorded `running`: it has an id and will be found under it. */
  | {type: 'job.created'; job: JobRecord}
  /** A rough version of image `index`, base64 as OpenAI sent it. */
  | {type: 'image.partial'; index: number; partialImageIndex: number; b64: string; contentType: string}
  /** Image `index` is stored; `job` is the record it will be completed into. */
  | {type: 'image.completed'; index: number; image: ImageRecord; job: JobRecord};

interface CallOutcome {
  usage: Usage;
  upstreamMs: number;
  plan: RunPlan;
}

/**
 * Runs one generation job, write-ahead:
 *
 * 1. the job is recorded `running`, with a lease, before any upstream call;
 * 2. upstream calls run in parallel, each image stored as soon as it arrives
 *    under `images/<job_id>/`;
 * 3. the job is completed with its images in one atomic write.
 *
 * A failure known to be one removes what was stored and marks the job
 * `failed` (kept, so GET /jobs/:id says what happened). A write whose outcome
 * is unknown is settled by reading it back; when that cannot be done, the
 * answer is JOB_OUTCOME_UNKNOWN naming the job, and nothing is removed: the
 * reconciler completes or removes it once its lease has run out. With
 * `allowPartial`, failed calls are reported in the job instead, as long as at
 * least one image was made.
 */
export async function generateImages(
  deps: GenerateDeps,
  command: GenerateCommand,
  options: GenerateOptions,
): Promise<JobRecord> {
  const now = deps.now ?? (() => new Date());
  const jobId = options.jobId;
  const createdAt = now();
  const running: JobRecord = {
    id: jobId,
    status: 'running',
    owner: options.owner,
    prompt: command.prompt,
    source: command.source,
    source_images: options.inputs?.sources ?? [],
    parameters: jobParameters(command, command.plan),
    metadata: command.metadata,
    usage: null,
    images: [],
    failures: [],
    warnings: command.plan.warnings,
    error: null,
    lease_until: new Date(createdAt.getTime() + options.leaseMs).toISOString(),
    created_at: createdAt.toISOString(),
    updated_at: createdAt.toISOString(),
    completed_at: null,
    upstream_ms: 0,
  };
  await recordRunning(deps.metadata, running);
  const emit = options.onEvent ?? (() => undefined);
  emit({type: 'job.created', job: running});

  const calls = splitIntoCalls(command.count, command.plan.imagesPerCall);
  /** The plan calls start with: the fallback once OpenAI has said the planned model is gone. */
  let current = command.plan;

  // Without allowPartial the first failure cancels the calls still in flight:
  // the caller gets an answer sooner and nothing more is stored.
  const abort = new AbortController();
  const callSignal = options.signal ? AbortSignal.any([options.signal, abort.signal]) : abort.signal;
  const images = Array.from<ImageRecord | undefined>({length: command.count});
  /** Every object a write was started for, landed or not: what a clean-up removes. */
  const attempted = new Set<string>();

  const storeImage = async (plan: RunPlan, generated: GeneratedImage, index: number) => {
    const data = plan.resizeTo ? await deps.codec.resize(generated.data, plan.resizeTo) : generated.data;
    const info = deps.codec.inspect(data, plan.resizeTo ? undefined : generated.sha256);
    if (!info) throw new AppError('UPSTREAM_ERROR', 'OpenAI returned data that is not an image');
    const id = randomUUID();
    const path = objectPathFor(jobId, index, id, info.extension);
    callSignal.throwIfAborted();
    attempted.add(path);
    await storageCall(
      'Could not store a generated image',
      deps.objects.put(path, data, {
        contentType: info.contentType,
        // Enough to rebuild the image record from the object alone (see the reconciler).
        metadata: {
          sha256: info.sha256,
          job_id: jobId,
          image_id: id,
          index: String(index),
          model: plan.model,
          width: String(info.width),
          height: String(info.height),
        },
      }),
    );
    const image: ImageRecord = {
      id,
      job_id: jobId,
      index,
      object_path: path,
      content_type: info.contentType,
      bytes: info.bytes,
      sha256: info.sha256,
      width: info.width,
      height: info.height,
      model: plan.model,
      size: plan.resizeTo ? `${plan.resizeTo.width}x${plan.resizeTo.height}` : plan.parameters.size,
      revised_prompt: generated.revisedPrompt,
      created_at: now().toISOString(),
    };
    images[index] = image;
    emit({type: 'image.completed', index, image, job: running});
  };

  const storeCall = async (plan: RunPlan, result: GeneratedImages, n: number, firstIndex: number) => {
    const outcomes = await Promise.allSettled(
      result.images.map((generated, offset) => storeImage(plan, generated, firstIndex + offset)),
    );
    const failure = outcomes.find(outcome => outcome.status === 'rejected');
    if (failure) {
      for (let i = firstIndex; i < firstIndex + n; i++) images[i] = undefined;
      throw failure.reason;
    }
  };

  const callWith = (plan: RunPlan, n: number, firstIndex: number): Promise<CallOutcome> => {
    const started = performance.now();
    const request: UpstreamRequest = {
      model: plan.model,
      prompt: command.prompt,
      n,
      parameters: plan.parameters,
      ...(plan.partialImages !== null ? {partialImages: plan.partialImages} : {}),
      ...(options.inputs ? {edit: options.inputs.upstream} : {}),
    };
    return deps.provider.generate(
      request,
      async result => {
        const upstreamMs = performance.now() - started;
        await storeCall(plan, result, n, firstIndex);
        return {usage: result.usage, upstreamMs, plan};
      },
      {
        signal: callSignal,
        onPartial: partial => emit({type: 'image.partial', index: firstIndex, ...partial}),
      },
    );
  };

  const runCall = async (n: number, firstIndex: number): Promise<CallOutcome> => {
    const plan = current;
    try {
      return await callWith(plan, n, firstIndex);
    } catch (error) {
      // OpenAI says the model is gone before the catalogue did: run once more on its replacement.
      const {fallback} = command;
      if (!fallback || plan === fallback || !isAppError(error) || error.code !== 'MODEL_UNAVAILABLE')
        throw error;
      current = fallback;
      return callWith(fallback, n, firstIndex);
    }
  };

  const callStarts: number[] = [];
  let firstIndex = 0;
  const work = calls.map(n => {
    callStarts.push(firstIndex);
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
  const kept = new Set(stored.map(image => image.object_path));

  if (failed.length > 0 && (!command.allowPartial || stored.length === 0)) {
    const error = pickError(failed.map(f => f.reason));
    await failRun(deps, jobId, [...attempted], error, now);
    throw error;
  }
  // Objects of failed calls (a write may have landed after its error): not part of the job.
  await removeObjects(
    deps.objects,
    [...attempted].filter(path => !kept.has(path)),
  );

  const failures: JobFailure[] = failed.map(({call, reason}) => {
    const error = isAppError(reason) ? reason : storageError('Generation failed', reason);
    return {first_index: callStarts[call]!, count: calls[call]!, code: error.code, error: error.message};
  });

  const ran = succeeded.at(-1)?.plan ?? current;
  const completedAt = now().toISOString();
  const job: JobRecord = {
    ...running,
    status: failures.length > 0 ? 'partial' : 'completed',
    parameters: jobParameters(command, ran),
    usage: sumUsage(succeeded.map(s => s.usage)),
    images: stored,
    failures,
    warnings: ran.warnings,
    lease_until: null,
    updated_at: completedAt,
    completed_at: completedAt,
    upstream_ms: Math.round(Math.max(0, ...succeeded.map(s => s.upstreamMs))),
  };
  return recordCompleted(deps, job, [...attempted], now);
}

/**
 * Writes the `running` record. Nothing has been paid for yet, so a failure is
 * answered as one; a write whose outcome is unknown is read back first, and
 * if it did land, the run goes on.
 */
async function recordRunning(metadata: MetadataStore, job: JobRecord): Promise<void> {
  try {
    await metadata.createJob(job);
  } catch (error) {
    if (isOutcomeUnknown(error)) {
      const landed = await metadata.getJob(job.id).catch(() => null);
      if (landed?.status === 'running') return;
      // If it lands later, it is a running job with no objects: the reconciler fails it after its lease.
    }
    throw storageError('Could not record the job', error);
  }
}

/** The final write of a run, and what its outcome means for the objects. */
async function recordCompleted(
  deps: GenerateDeps,
  job: JobRecord,
  attempted: string[],
  now: () => Date,
): Promise<JobRecord> {
  let completed: boolean;
  try {
    completed = await deps.metadata.completeJob(job);
  } catch (error) {
    if (!isOutcomeUnknown(error)) {
      const failure = storageError('Could not record the job', error);
      await failRun(deps, job.id, attempted, failure, now);
      throw failure;
    }
    // The write may have landed, or may land later: read, and never remove what a record may point at.
    const landed = await deps.metadata.getJob(job.id).catch(() => null);
    if (landed && landed.status !== 'running') return settleLanded(deps, landed, attempted, job);
    throw outcomeUnknown(job.id, error);
  }
  if (completed) return job;
  // The reconciler failed the job meanwhile (the run outlived its lease): it is not kept.
  const landed = await deps.metadata.getJob(job.id).catch(() => null);
  if (landed && landed.status !== 'running') return settleLanded(deps, landed, attempted, job);
  throw outcomeUnknown(job.id, new Error('the job was neither completed nor failed'));
}

/** What the record that landed says: completed as written, or failed (then its objects go). */
async function settleLanded(
  deps: GenerateDeps,
  landed: JobRecord,
  attempted: string[],
  written: JobRecord,
): Promise<JobRecord> {
  if (landed.status === 'failed') {
    await removeObjects(deps.objects, attempted);
    throw new AppError(
      'STORAGE_ERROR',
      `Job ${landed.id} ran out of time before it was recorded; nothing was kept. Generate again.`,
      {details: {job_id: landed.id}},
    );
  }
  return landed.images.length === written.images.length ? landed : written;
}

function outcomeUnknown(jobId: string, cause: unknown): AppError {
  return new AppError(
    'JOB_OUTCOME_UNKNOWN',
    `Job ${jobId} could not be confirmed as recorded; it may still complete. GET /jobs/${jobId} tells, within minutes`,
    {cause, retryAfterSeconds: 30, details: {job_id: jobId}},
  );
}

/**
 * A run that failed for certain: its objects go first, then the job is marked
 * failed with the error. If either step fails, the job is left `running` and
 * the reconciler finishes the clean-up after its lease.
 */
async function failRun(
  deps: GenerateDeps,
  jobId: string,
  attempted: string[],
  reason: unknown,
  now: () => Date,
): Promise<void> {
  const error = isAppError(reason) ? reason : storageError('Generation failed', reason);
  const removed = await Promise.allSettled(attempted.map(path => deps.objects.delete(path)));
  if (removed.some(outcome => outcome.status === 'rejected')) return;
  await deps.metadata
    .failJob(jobId, {code: error.code, message: error.message}, now().toISOString())
    .catch(() => undefined);
}

/** What the job ran with, as it keeps it: every upstream parameter, null where unset. */
function jobParameters(command: GenerateCommand, plan: RunPlan): JobParameters {
  const stored = Object.fromEntries(
    UPSTREAM_PARAMETER_NAMES.map(name => [name, plan.parameters[name] ?? null]),
  ) as {[K in keyof UpstreamParameters]-?: NonNullable<UpstreamParameters[K]> | null};
  return {
    count: command.count,
    requested_model: command.requestedModel,
    model: plan.model,
    ...stored,
    size: plan.parameters.size,
    allow_partial: command.allowPartial,
  };
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

/** Best effort: the error that led here is the one reported, not a clean-up failure. */
export async function removeObjects(store: ObjectStore, paths: string[]): Promise<void> {
  await Promise.allSettled(paths.map(path => store.delete(path)));
}

/** Adds token counts across upstream calls, field by field; null when no call reported usage. */
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
    return b;
  };
  return reported.reduce((total, u) => add(total, u) as Record<string, unknown>);
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
