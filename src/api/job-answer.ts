import {z} from 'zod';
import type {GenerationEvent} from '../core/usecases/generate';
import type {GenerateOutcome} from '../core/usecases/idempotency';
import {WarningSchema, type JobRecord} from '../core/records';
import {errorBody, sendJson, toAppError} from './responses';
import type {EventSpecs, RouteContext} from './route';
import {EventStream} from './sse';
import type {ImageLinker} from './urls';
import {ErrorBodySchema, ImageViewSchema, JobViewSchema, imageView, jobView, type JobView} from './views';

/**
 * Answering with a job that is being made: one JSON body once it is done, or,
 * for a caller who asked for a stream, Server-Sent Events as it goes. Any
 * operation that runs a generation use case answers through `answerWithJob`.
 */

/** Cloud Run ends a streamed answer at 10 MB. */
export const STREAM_LIMIT_BYTES = 10_000_000;

/**
 * What a stream may carry before its last event, partial images included.
 * The 2 MB left below the limit hold heartbeats and a final error event.
 */
export const PARTIAL_IMAGE_BUDGET_BYTES = 8_000_000;

/** Room for one presented image besides its prompt: ids, URLs (a signed one is ~1.5 KB), sizes, hash. */
const IMAGE_VIEW_ALLOWANCE_BYTES = 4096;

/** Room for a job's fields besides prompt, parameters, metadata and warnings: ids, times, usage, failures. */
const JOB_VIEW_ALLOWANCE_BYTES = 16_384;

const JobCreatedEventSchema = z
  .object({
    job_id: z.uuid(),
    model: z.string().describe('The model the images are made with.'),
    count: z.int().positive(),
    warnings: z.array(WarningSchema),
  })
  .meta({id: 'JobCreatedEvent'});

const ImagePartialEventSchema = z
  .object({
    index: z.int().nonnegative().describe('Which image of the job this is a rough version of.'),
    partial_image_index: z.int().nonnegative(),
    b64_json: z.string().describe('The rough image, base64 as OpenAI sent it; it is not stored.'),
    content_type: z.string(),
  })
  .meta({id: 'ImagePartialEvent'});

const ImageCompletedEventSchema = z
  .object({
    index: z.int().nonnegative(),
    image: ImageViewSchema,
  })
  .meta({id: 'ImageCompletedEvent'});

/** The events of a job's stream, in the order they come (partial and completed events interleave by index). */
export const JOB_EVENTS = {
  'job.created': {
    description: 'First: the job is recorded, and GET /jobs/{id} finds it from now on.',
    schema: JobCreatedEventSchema,
  },
  'image.partial': {
    description:
      'A rough version of image `index` while OpenAI works on it. Dropped once the stream has used its size budget.',
    schema: ImagePartialEventSchema,
  },
  'image.completed': {
    description: 'Image `index` is stored: the image as the job will present it.',
    schema: ImageCompletedEventSchema,
  },
  'job.completed': {
    description: 'Last, on success: exactly the body the JSON answer would have had.',
    schema: JobViewSchema,
  },
  error: {
    description: 'Last, on a failure after the stream began: the usual error body.',
    schema: ErrorBodySchema,
  },
} satisfies EventSpecs;

type JobEventName = keyof typeof JOB_EVENTS;
type JobEventData<N extends JobEventName> = z.output<(typeof JOB_EVENTS)[N]['schema']>;

export interface JobAnswer {
  /** Answer as Server-Sent Events (`stream: true`, or Accept: text/event-stream). */
  stream: boolean;
  /** Runs the use case, telling `onEvent` as the job goes. */
  run(onEvent?: (event: GenerationEvent) => void): Promise<GenerateOutcome>;
  /** Response headers that depend on the job (a model's deprecation, say). */
  headersFor?(job: JobRecord): Record<string, string>;
  /** What a JSON answer sends, from the job view (the view itself when unset). */
  shape?(view: JobView, job: JobRecord): unknown;
}

type AnswerContext = Pick<RouteContext<unknown, unknown, unknown, unknown>, 'res' | 'labels' | 'links'>;

/**
 * Runs the generation and answers with its job. A stream sends nothing
 * before `job.created`, so anything refused before the job exists
 * (validation, quota, an idempotency conflict) is still an ordinary JSON
 * error; a failure after it is an `error` event that ends the stream. A
 * caller who goes away does not stop the job: it completes and is stored.
 */
export async function answerWithJob(ctx: AnswerContext, answer: JobAnswer): Promise<void> {
  const headers = (job: JobRecord, replayed: boolean) => ({
    ...(replayed ? {'Idempotent-Replayed': 'true'} : {}),
    ...answer.headersFor?.(job),
  });
  if (!answer.stream) {
    const {job, replayed} = await answer.run();
    labelJob(ctx.labels, job);
    const view = await jobView(job, ctx.links);
    sendJson(ctx.res, 200, answer.shape ? answer.shape(view, job) : view, headers(job, replayed));
    return;
  }

  const stream = new EventStream(ctx.res);
  const events = new JobEventWriter(stream, ctx.links, job => {
    // Known from here on, so even a job that fails is found from its access log line.
    ctx.labels.job_id = job.id;
    return headers(job, false);
  });
  try {
    const {job, replayed} = await answer.run(events.onEvent);
    labelJob(ctx.labels, job);
    // A replayed job made no events: its stream is the one last event.
    await events.complete(job, replayed ? headers(job, true) : {});
    stream.end();
  } catch (error) {
    await events.settle();
    if (!stream.started) throw error;
    stream.send('error', errorBody(toAppError(error)));
    stream.end();
    throw error;
  } finally {
    events.label(ctx.labels);
  }
}

function labelJob(labels: Record<string, string>, job: JobRecord): void {
  labels.job_id = job.id;
  labels.image_ids = job.images.map(image => image.id).join(',');
  labels.upstream_ms = String(job.upstream_ms);
}

/**
 * What partial images may add to one stream, so that it stays under Cloud
 * Run's limit whatever the images weigh. A partial is sent only while all the
 * partials sent, it included, fit in the budget; once one does not, no
 * partial is sent for the rest of the stream (a later, smaller one would show
 * a caller an older picture after a newer one was skipped). Completed events
 * are never dropped: their room is reserved up front.
 */
export class PartialImageBudget {
  sent = 0;
  dropped = 0;
  private spent = 0;
  private closed = false;

  constructor(private readonly bytes: number) {}

  get exhausted(): boolean {
    return this.closed;
  }

  /** Whether a partial of `size` bytes may be sent; counts it either way. */
  admit(size: number): boolean {
    if (this.closed || this.spent + size > this.bytes) {
      this.drop();
      return false;
    }
    this.spent += size;
    this.sent++;
    return true;
  }

  /** Counts a partial that is not sent, and sends none after it. */
  drop(): void {
    this.closed = true;
    this.dropped++;
  }
}

/**
 * An upper bound of what a job's stream sends after its partial images: an
 * image.completed for each image, and job.completed, which presents every
 * image again. Each presented image repeats the prompt, which may be
 * 32,000 characters.
 */
export function completionReserve(job: JobRecord): number {
  const prompt = Buffer.byteLength(JSON.stringify(job.prompt));
  const fields = Buffer.byteLength(
    JSON.stringify({
      prompt: job.prompt,
      parameters: job.parameters,
      metadata: job.metadata,
      warnings: job.warnings,
    }),
  );
  return job.parameters.count * 2 * (prompt + IMAGE_VIEW_ALLOWANCE_BYTES) + fields + JOB_VIEW_ALLOWANCE_BYTES;
}

/** Turns the use case's events into the stream's, in order, within the size budget. */
class JobEventWriter {
  /** image.completed events being presented (a signed URL may take a round trip). */
  private readonly pending = new Set<Promise<void>>();
  private failure: {error: unknown} | undefined;
  private budget = new PartialImageBudget(0);

  constructor(
    private readonly stream: EventStream,
    private readonly links: ImageLinker,
    private readonly headersFor: (job: JobRecord) => Record<string, string>,
  ) {}

  /** Given to the use case, which requires that it never throws. */
  readonly onEvent = (event: GenerationEvent): void => {
    try {
      if (event.type === 'job.created') this.created(event.job);
      else if (event.type === 'image.partial') this.partial(event);
      else this.completed(event);
    } catch (error) {
      this.failure ??= {error};
    }
  };

  /** Once every image.completed is written: job.completed, or the first failure to present an image. */
  async complete(job: JobRecord, headers: Record<string, string>): Promise<void> {
    await this.settle();
    if (this.failure) throw this.failure.error;
    for (const [name, value] of Object.entries(headers)) this.stream.setHeader(name, value);
    this.send('job.completed', await jobView(job, this.links));
  }

  /** Waits for the image.completed events under way. */
  async settle(): Promise<void> {
    await Promise.all(this.pending);
  }

  label(labels: Record<string, string>): void {
    labels.partial_images = String(this.budget.sent);
    if (this.budget.dropped > 0) labels.partial_images_dropped = String(this.budget.dropped);
    labels.stream_bytes = String(this.stream.bytesWritten);
  }

  private send<N extends JobEventName>(name: N, data: JobEventData<N>): void {
    this.stream.send(name, data);
  }

  private created(job: JobRecord): void {
    for (const [name, value] of Object.entries(this.headersFor(job))) this.stream.setHeader(name, value);
    this.send('job.created', {
      job_id: job.id,
      model: job.parameters.model,
      count: job.parameters.count,
      warnings: job.warnings,
    });
    this.budget = new PartialImageBudget(
      PARTIAL_IMAGE_BUDGET_BYTES - this.stream.bytesWritten - completionReserve(job),
    );
  }

  private partial(event: Extract<GenerationEvent, {type: 'image.partial'}>): void {
    // Nothing to serialize for a caller who has gone, or for a partial that is dropped anyway.
    if (this.stream.disconnected) return;
    if (this.budget.exhausted) return this.budget.drop();
    const data: JobEventData<'image.partial'> = {
      index: event.index,
      partial_image_index: event.partialImageIndex,
      content_type: event.contentType,
      b64_json: event.b64,
    };
    const json = JSON.stringify(data);
    if (this.budget.admit(this.stream.sizeOf('image.partial', json)))
      this.stream.sendSerialized('image.partial', json);
  }

  private completed(event: Extract<GenerationEvent, {type: 'image.completed'}>): void {
    const written: Promise<void> = imageView(event.image, event.job, this.links)
      .then(image => this.send('image.completed', {index: event.index, image}))
      .catch(error => {
        this.failure ??= {error};
      })
      .finally(() => this.pending.delete(written));
    this.pending.add(written);
  }
}
