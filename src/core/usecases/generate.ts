import {randomUUID} from 'node:crypto';
import {AppError, isAppError, storageCall, storageError} from '../errors';
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
} from '../ports';
import type {ImageRecord, JobFailure, JobParameters, JobRecord, Usage} from '../records';
import {objectPathFor} from '../ids';

export interface GenerateDeps {
  provider: ImageProvider;
  objects: ObjectStore;
  metadata: MetadataStore;
  codec: ImageCodec;
  now?: () => Date;
}

export interface GenerateOptions {
  /** Fixed up front when the job is claimed under an idempotency key. */
  jobId?: string;
  signal?: AbortSignal;
}

interface CallOutcome {
  usage: Usage;
  upstreamMs: number;
  plan: RunPlan;
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
  const calls = splitIntoCalls(command.count, command.plan.imagesPerCall);
  /** The plan calls start with: the fallback once OpenAI has said the planned model is gone. */
  let current = command.plan;

  // Without allowPartial the first failure cancels the calls still in flight:
  // the caller gets an answer sooner and nothing more is stored.
  const abort = new AbortController();
  const callSignal = options.signal ? AbortSignal.any([options.signal, abort.signal]) : abort.signal;
  const images = Array.from<ImageRecord | undefined>({length: command.count});

  const storeImage = async (plan: RunPlan, generated: GeneratedImage, index: number, written: string[]) => {
    const data = plan.resizeTo ? await deps.codec.resize(generated.data, plan.resizeTo) : generated.data;
    const info = deps.codec.inspect(data, plan.resizeTo ? undefined : generated.sha256);
    if (!info) throw new AppError('UPSTREAM_ERROR', 'OpenAI returned data that is not an image');
    const id = randomUUID();
    const path = objectPathFor(jobId, index, id, info.extension);
    callSignal.throwIfAborted();
    written.push(path);
    await storageCall(
      'Could not store a generated image',
      deps.objects.put(path, data, {
        contentType: info.contentType,
        metadata: {sha256: info.sha256, job_id: jobId, image_id: id, model: plan.model},
      }),
    );
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
      model: plan.model,
      size: plan.resizeTo ? `${plan.resizeTo.width}x${plan.resizeTo.height}` : plan.parameters.size,
      prompt: command.prompt,
      revised_prompt: generated.revisedPrompt,
      created_at: now().toISOString(),
    };
  };

  const storeCall = async (plan: RunPlan, result: GeneratedImages, n: number, firstIndex: number) => {
    const written: string[] = [];
    const outcomes = await Promise.allSettled(
      result.images.map((generated, offset) => storeImage(plan, generated, firstIndex + offset, written)),
    );
    const failure = outcomes.find(outcome => outcome.status === 'rejected');
    if (failure) {
      // Every upload of this call has settled: nothing lands after this clean-up.
      await removeObjects(deps.objects, written);
      for (let i = firstIndex; i < firstIndex + n; i++) images[i] = undefined;
      throw failure.reason;
    }
  };

  const callWith = (plan: RunPlan, n: number, firstIndex: number): Promise<CallOutcome> => {
    const started = performance.now();
    const request = {model: plan.model, prompt: command.prompt, n, parameters: plan.parameters};
    return deps.provider.generate(
      request,
      async result => {
        const upstreamMs = performance.now() - started;
        await storeCall(plan, result, n, firstIndex);
        return {usage: result.usage, upstreamMs, plan};
      },
      callSignal,
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

  if (failed.length > 0 && (!command.allowPartial || stored.length === 0)) {
    await removeObjects(
      deps.objects,
      stored.map(image => image.object_path),
    );
    throw pickError(failed.map(f => f.reason));
  }

  const failures: JobFailure[] = failed.map(({call, reason}) => {
    const error = isAppError(reason) ? reason : storageError('Generation failed', reason);
    return {first_index: callStarts[call]!, count: calls[call]!, code: error.code, error: error.message};
  });

  const ran = succeeded.at(-1)?.plan ?? current;
  const completedAt = now().toISOString();
  const job: JobRecord = {
    id: jobId,
    status: failures.length > 0 ? 'partial' : 'completed',
    prompt: command.prompt,
    source: command.source,
    parameters: jobParameters(command, ran),
    metadata: command.metadata,
    usage: sumUsage(succeeded.map(s => s.usage)),
    images: stored,
    failures,
    warnings: ran.warnings,
    created_at: createdAt,
    updated_at: completedAt,
    completed_at: completedAt,
    upstream_ms: Math.round(Math.max(0, ...succeeded.map(s => s.upstreamMs))),
  };
  try {
    await deps.metadata.saveJob(job);
  } catch (error) {
    await removeObjects(
      deps.objects,
      stored.map(image => image.object_path),
    );
    throw storageError('Could not record the job', error);
  }
  return job;
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
