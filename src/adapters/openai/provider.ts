import {subscribe, unsubscribe} from 'node:diagnostics_channel';
import {AppError, validationError} from '../../core/errors';
import {NOT_FOR_EDIT, NOT_FOR_GENERATE, type UpstreamParameters} from '../../core/generation';
import type {
  CallOptions,
  GeneratedImages,
  ImageProvider,
  InputImage,
  UpstreamRequest,
} from '../../core/ports';
import {scrubSecrets} from '../../secrets';
import {Limiter} from './limiter';
import {BufferPool, parseImagesResponse, revisedPromptOf, usageOf} from './response-parser';
import {readImageStream} from './stream-parser';

export interface OpenAIProviderOptions {
  apiKey: string | undefined;
  organization: string | undefined;
  project: string | undefined;
  baseURL: string | undefined;
  /** Total time one upstream call may take, retries included. */
  timeoutMs: number;
  maxRetries: number;
  /** Upstream answers read at once (each holds its images in memory until they are stored). */
  maxConcurrentDecodes: number;
  /**
   * Texts never to repeat (the callers' API keys); the OpenAI key is always
   * among them. An upstream message can quote what was sent (a gateway echoes
   * the Authorization header), and such messages reach the caller and the job.
   */
  secrets?: readonly string[];
  /**
   * Runs once a request has left, while it only waits for its answer: a new
   * instance gets what handling the answer needs ready (loads, connects) in
   * time that would otherwise be idle.
   */
  whileWaiting?: () => void;
  /** Instrumentation (metrics, tests): told as calls wait for a decode slot and decode their answers. */
  decodes?: DecodeObserver;
}

export interface DecodeObserver {
  /** A call asks for a decode slot. */
  waiting?(): void;
  /**
   * An answer's images begin to be decoded into memory; the function it
   * returns is called once that memory is handed back.
   */
  decoding?(): () => void;
}

/** Loaded on first use: the SDK is not needed to serve health checks or stored images. */
const loadSdk = () => require('openai') as typeof import('openai');
type Sdk = ReturnType<typeof loadSdk>;
type OpenAIClient = InstanceType<Sdk['default']>;
type SdkGenerateParams = import('openai').OpenAI.Images.ImageGenerateParamsNonStreaming;
type SdkEditParams = import('openai').OpenAI.Images.ImageEditParamsNonStreaming;

type GenerateParameters = Omit<UpstreamParameters, (typeof NOT_FOR_GENERATE)[number]>;
type EditParameters = Omit<UpstreamParameters, (typeof NOT_FOR_EDIT)[number]>;
type PartialImageEvent = import('openai').OpenAI.Images.ImageGenPartialImageEvent;

/**
 * The request bodies, picked from the SDK's own types: an upstream parameter
 * the SDK does not know, or one typed differently, fails to compile here.
 */
type GenerateBody = Pick<SdkGenerateParams, 'model' | 'prompt' | 'n' | keyof GenerateParameters>;
type EditBody = Pick<
  SdkEditParams,
  'model' | 'prompt' | 'n' | 'image' | 'mask' | 'markup' | keyof EditParameters
>;

type CallBody = {generate: GenerateBody; edit?: never} | {edit: EditBody; generate?: never};

/** The parameters without those an operation does not take (the request schemas never set them). */
function parametersFor<K extends keyof UpstreamParameters>(
  parameters: UpstreamParameters,
  excluded: readonly K[],
): Omit<UpstreamParameters, K> {
  const kept = {...parameters};
  for (const name of excluded) delete kept[name];
  return kept;
}

const CONTENT_TYPES: Record<string, string> = {png: 'image/png', jpeg: 'image/jpeg', webp: 'image/webp'};

const SAFETY_CODES = new Set(['content_policy_violation', 'moderation_blocked']);

/**
 * Image provider on the official SDK. The SDK retries 429, 5xx and connection
 * errors with backoff and honours Retry-After; we bound the whole call with one
 * deadline and translate its errors into our codes.
 */
export class OpenAIImageProvider implements ImageProvider {
  private client: OpenAIClient | undefined;
  /** Decode buffers, reused from one answer to the next (see BufferPool). */
  private readonly buffers = new BufferPool();
  /** Calls wait upstream in any number; reading their answers is bounded. */
  private readonly decodeSlots: Limiter;
  /**
   * Bytes of the last streamed image of each size and format: a stream has no
   * Content-Length, and a buffer grown by doubling allocates twice what it
   * keeps, which with many streams at once means more garbage collection.
   */
  private readonly streamedBytes = new Map<string, number>();

  /** What every upstream text goes through before it leaves the adapter. */
  private readonly scrub: Scrub;

  constructor(private readonly options: OpenAIProviderOptions) {
    this.decodeSlots = new Limiter(options.maxConcurrentDecodes);
    const secrets = [options.apiKey ?? '', ...(options.secrets ?? [])];
    // Masked keys too ("sk-proj-****1234"): OpenAI masks them, but say nothing of them.
    this.scrub = text => scrubSecrets(text, secrets).replace(/sk-[A-Za-z0-9_*.-]+/g, 'sk-***');
  }

  get configured(): boolean {
    return this.options.apiKey !== undefined;
  }

  /** Built on first use and reused, so its keep-alive connections serve every request. */
  private getClient(): OpenAIClient {
    const {default: Client} = loadSdk();
    this.client ??= new Client({
      apiKey: this.options.apiKey,
      organization: this.options.organization ?? null,
      project: this.options.project ?? null,
      baseURL: this.options.baseURL ?? null,
      timeout: this.options.timeoutMs,
      maxRetries: this.options.maxRetries,
    });
    return this.client;
  }

  async generate<T>(
    request: UpstreamRequest,
    store: (result: GeneratedImages) => Promise<T>,
    options: CallOptions = {},
  ): Promise<T> {
    const {signal} = options;
    const client = this.getClient();
    const deadline = AbortSignal.timeout(this.options.timeoutMs);
    const combined = signal ? AbortSignal.any([signal, deadline]) : deadline;
    const body = await this.bodyOf(request);
    const fail = (error: unknown) =>
      translateError(error, request, deadline.aborted, signal?.aborted ?? false, this.scrub);

    const whileWaiting = this.options.whileWaiting;
    const sent = whileWaiting && onceSent(new URL(client.baseURL).origin, whileWaiting);
    if (request.partialImages !== undefined) {
      let image: GeneratedImages & {release(): void};
      try {
        image = await this.streamImage(client, body, request.partialImages, combined, options.onPartial);
      } catch (error) {
        throw fail(error);
      } finally {
        sent?.();
      }
      // The image took a decode slot before it was decoded (streamImage); it keeps it until stored.
      try {
        return await store(image);
      } finally {
        image.release();
      }
    }
    let response: Response;
    try {
      response = await (
        body.edit
          ? client.images.edit(body.edit, {signal: combined})
          : client.images.generate(body.generate, {signal: combined})
      ).asResponse();
    } catch (error) {
      throw fail(error);
    } finally {
      sent?.();
    }
    this.options.decodes?.waiting?.();
    return this.decodeSlots.run(async () => {
      const result = await this.readImages(response, request, deadline, signal);
      try {
        return await store(result);
      } finally {
        // `store` settles only once nothing reads the images any more.
        result.release();
      }
    });
  }

  /** The SDK body of a call: a generation, or an edit with its input files. */
  private async bodyOf(request: UpstreamRequest): Promise<CallBody> {
    const {model, prompt, n, parameters, edit} = request;
    if (!edit) return {generate: {model, prompt, n, ...parametersFor(parameters, NOT_FOR_GENERATE)}};
    const {toFile} = loadSdk();
    // Each file wraps the input's Blob: no call copies the bytes (a File made from a Buffer would).
    const file = (input: InputImage) => toFile(input.data, input.filename, {type: input.contentType});
    // hd is a dall-e-3 quality the edit request schema refuses; the SDK's edit type has no place for it.
    const {quality, ...rest} = parametersFor(parameters, NOT_FOR_EDIT);
    if (quality === 'hd') throw new AppError('VALIDATION_ERROR', "quality 'hd' cannot be sent to an edit");
    return {
      edit: {
        model,
        prompt,
        n,
        ...rest,
        ...(quality !== undefined ? {quality} : {}),
        image: await Promise.all(edit.images.map(file)),
        ...(edit.mask ? {mask: await file(edit.mask)} : {}),
        ...(edit.markup ? {markup: await file(edit.markup)} : {}),
      },
    };
  }

  /**
   * One streamed image: partial images are handed on as they arrive, base64
   * as it came (they only travel on to the caller); the final image is
   * decoded and hashed as it arrives (see readImageStream), once it holds a
   * decode slot. Its slot is taken when the completed event begins, so
   * MAX_CONCURRENT_DECODES bounds streamed images as it does answers; the
   * image gives it back with its memory (`release`).
   */
  private async streamImage(
    client: OpenAIClient,
    body: CallBody,
    partialImages: number,
    signal: AbortSignal,
    onPartial: CallOptions['onPartial'],
  ): Promise<GeneratedImages & {release(): void}> {
    const streaming = {n: 1, stream: true as const, partial_images: partialImages};
    const response = await (
      body.edit
        ? client.images.edit({...body.edit, ...streaming}, {signal})
        : client.images.generate({...body.generate, ...streaming}, {signal})
    ).asResponse();
    if (!response.body) throw new AppError('UPSTREAM_ERROR', 'OpenAI answered without a body');
    const {default: OpenAIClient} = loadSdk();
    const sent = body.edit ?? body.generate;
    const shape = `${sent.size ?? ''} ${sent.output_format ?? ''} ${sent.output_compression ?? ''}`;
    const expected = this.streamedBytes.get(shape) ?? 0;
    let slot: (() => void) | undefined;
    let decoded: (() => void) | undefined;
    const streamed = await readImageStream(
      response.body,
      (name, data) => {
        const event = data as {type?: unknown; error?: unknown} & Partial<PartialImageEvent>;
        // As the SDK's own stream reader does: an error event, or any event carrying an error.
        if (name === 'error' || event?.error) {
          throw new OpenAIClient.APIError(undefined, event?.error ?? event, undefined, response.headers);
        }
        const partial =
          event?.type === 'image_generation.partial_image' || event?.type === 'image_edit.partial_image';
        if (partial && typeof event.b64_json === 'string') {
          onPartial?.({
            partialImageIndex: event.partial_image_index ?? 0,
            b64: event.b64_json,
            contentType: CONTENT_TYPES[event.output_format ?? ''] ?? 'application/octet-stream',
          });
        }
      },
      {
        pool: this.buffers,
        sizeHint: Math.ceil(expected * 1.25),
        beforeImage: async () => {
          this.options.decodes?.waiting?.();
          slot = await this.decodeSlots.acquire();
        },
        onDecode: () => (decoded = this.options.decodes?.decoding?.()),
      },
    ).catch((error: unknown) => {
      decoded?.();
      slot?.();
      throw error;
    });
    const {image, event} = streamed;
    if (this.streamedBytes.size > 64 && !this.streamedBytes.has(shape)) this.streamedBytes.clear();
    this.streamedBytes.set(shape, image.data.length);
    return {
      images: [{data: image.data, sha256: image.sha256, revisedPrompt: null}],
      usage: usageOf(event),
      release: () => {
        streamed.release();
        decoded?.();
        slot?.();
      },
    };
  }

  /** Streams the body: image data is decoded and hashed as it arrives (see response-parser). */
  private async readImages(
    response: Response,
    request: UpstreamRequest,
    deadline: AbortSignal,
    signal: AbortSignal | undefined,
  ): Promise<GeneratedImages & {release(): void}> {
    if (!response.body) throw new AppError('UPSTREAM_ERROR', 'OpenAI answered without a body');
    let parsed;
    const decoded = this.options.decodes?.decoding?.();
    try {
      parsed = await parseImagesResponse(
        response.body,
        Number(response.headers.get('content-length') ?? NaN),
        this.buffers,
      );
    } catch (error) {
      decoded?.();
      if (deadline.aborted || signal?.aborted)
        throw translateError(error, request, deadline.aborted, signal?.aborted ?? false, this.scrub);
      throw new AppError('UPSTREAM_ERROR', 'OpenAI sent an answer that could not be read', {cause: error});
    }
    const items = parsed.body.data ?? [];
    const expected = request.n;
    const release = () => {
      parsed.release();
      decoded?.();
    };
    if (items.length !== expected || parsed.images.length !== expected) {
      release();
      throw new AppError(
        'UPSTREAM_ERROR',
        `OpenAI returned ${parsed.images.length} image(s) where ${expected} were asked for`,
      );
    }
    return {
      images: parsed.images.map((image, i) => ({
        data: image.data,
        sha256: image.sha256,
        revisedPrompt: revisedPromptOf(items[i]?.revised_prompt),
      })),
      usage: usageOf(parsed.body),
      release,
    };
  }
}

const BODY_SENT = 'undici:request:bodySent';

/**
 * Runs `callback` soon after an images request to `origin` has been written in full,
 * as fetch's HTTP client (undici) reports on its diagnostics channel. Any such
 * request will do: the callback only prepares work for after the answer. The
 * returned function runs it now if that has not happened yet.
 */
function onceSent(origin: string, callback: () => void): () => void {
  let done = false;
  const finish = () => {
    if (done) return;
    done = true;
    unsubscribe(BODY_SENT, listener);
    setImmediate(() => {
      try {
        callback();
      } catch {
        // It only gets work ready early; whatever failed fails again where it is needed.
      }
    });
  };
  const listener = (message: unknown) => {
    const request = (message as {request?: {origin?: unknown; path?: unknown}}).request;
    const path = String(request?.path);
    if (
      request?.origin === origin &&
      (path.endsWith('/images/generations') || path.endsWith('/images/edits'))
    )
      finish();
  };
  subscribe(BODY_SENT, listener);
  return finish;
}

type Scrub = (text: string) => string;

function translateError(
  error: unknown,
  request: UpstreamRequest,
  timedOut: boolean,
  cancelled: boolean,
  scrub: Scrub,
): AppError {
  const {default: OpenAIClient} = loadSdk();
  if (timedOut || error instanceof OpenAIClient.APIConnectionTimeoutError) {
    return new AppError('UPSTREAM_TIMEOUT', 'OpenAI did not answer in time', {cause: error});
  }
  if (cancelled || error instanceof OpenAIClient.APIUserAbortError) {
    return new AppError('UPSTREAM_ERROR', 'The request was cancelled before OpenAI answered', {cause: error});
  }
  if (!(error instanceof OpenAIClient.APIError)) {
    return new AppError('UPSTREAM_ERROR', 'OpenAI request failed', {cause: error});
  }
  const code = typeof error.code === 'string' ? error.code : undefined;
  const details = upstreamDetails(error);
  if (error instanceof OpenAIClient.APIConnectionError) {
    return new AppError('UPSTREAM_ERROR', 'Could not reach OpenAI', {cause: error, details});
  }
  // Before the preview refusals: a prompt refused while making a GIF is still the prompt's fault.
  if (code !== undefined && SAFETY_CODES.has(code)) {
    return new AppError(
      'CONTENT_POLICY_VIOLATION',
      'OpenAI refused the prompt under its safety policy; rephrase it and try again',
      {cause: error, details},
    );
  }
  const gone = modelGone(error, request, scrub);
  if (gone) return gone;
  const preview = previewRefused(error, request, scrub);
  if (preview) return preview;
  switch (error.status) {
    case 400:
    case 422:
      return validationError(
        [
          {
            field: error.param ? scrub(error.param) : '(body)',
            message: `OpenAI rejected the request: ${upstreamMessage(error, scrub)}`,
          },
        ],
        details,
      );
    case 401:
    case 403:
      // A credentials problem is ours to fix, not the caller's; never echo the key.
      return new AppError(
        'SERVICE_ERROR',
        `OpenAI rejected the function's credentials (${error.status}); check OPENAI_API_KEY and OPENAI_ORGANIZATION`,
        {cause: error, details},
      );
    case 429:
      return new AppError(
        'RATE_LIMIT_EXCEEDED',
        code === 'insufficient_quota'
          ? 'The OpenAI account is out of quota'
          : 'OpenAI rate limit reached; retry after the indicated delay',
        {cause: error, details, retryAfterSeconds: retryAfterSeconds(error.headers)},
      );
    default:
      return new AppError('UPSTREAM_ERROR', `OpenAI failed with status ${error.status ?? 'unknown'}`, {
        cause: error,
        details,
      });
  }
}

type ApiError = InstanceType<Sdk['default']['APIError']>;

/**
 * OpenAI's answer when the model is shut down (404 model_not_found) or unknown
 * to it (400 on `model`). A model_not_found that names another parameter
 * (`svg.model`) is about that parameter's model: the request's model is
 * served, so it is the caller's value that is wrong, and no replacement model
 * would help.
 */
function modelGone(error: ApiError, request: UpstreamRequest, scrub: Scrub): AppError | null {
  const param = error.param ?? null;
  if (error.status === 404 && error.code === 'model_not_found' && param !== null && param !== 'model') {
    const field = scrub(param);
    return validationError(
      [{field, message: `OpenAI does not serve this model: ${upstreamMessage(error, scrub)}`}],
      upstreamDetails(error),
    );
  }
  const gone =
    (error.status === 404 && error.code === 'model_not_found') ||
    (error.status === 400 && param === 'model' && error.code === 'invalid_value');
  if (!gone) return null;
  return new AppError(
    'MODEL_UNAVAILABLE',
    `OpenAI does not serve ${request.model}: ${upstreamMessage(error, scrub)}`,
    {
      cause: error,
      details: {fields: [{field: 'model', message: 'not served by OpenAI'}], ...upstreamDetails(error)},
    },
  );
}

/** The preview features a request uses, by the parameter OpenAI would name when it refuses one. */
function previewsUsed(parameters: UpstreamParameters): Record<string, string> {
  const used: Record<string, string> = {};
  if (parameters.output_format === 'gif') used.output_format = 'GIF output';
  if (parameters.output_format === 'svg') used.output_format = 'SVG output';
  if (parameters.svg) used.svg = 'SVG model selection';
  if (parameters.background === 'transparent') used.background = 'transparent backgrounds';
  return used;
}

/**
 * OpenAI enables previews (GIF, SVG, transparency on some models) per
 * project: a refusal that names a preview parameter the request used is the
 * caller's feature not being enabled, not a credentials problem or an outage.
 * A refusal that names no parameter (OpenAI does not always) of a request for
 * GIF or SVG output is taken as that output being refused; so is any 403 of
 * such a request (the function's credentials are good for everything else).
 */
function previewRefused(error: ApiError, request: UpstreamRequest, scrub: Scrub): AppError | null {
  if (error.status !== 400 && error.status !== 403) return null;
  const used = previewsUsed(request.parameters);
  // `svg.model` or `svg[model]`: the preview is the parameter's root.
  const named = error.param ? error.param.split(/[.[]/)[0]! : undefined;
  const previewOutput =
    request.parameters.output_format === 'gif' || request.parameters.output_format === 'svg';
  const field =
    named !== undefined && used[named]
      ? named
      : previewOutput && (named === undefined || error.status === 403)
        ? 'output_format'
        : undefined;
  const feature = field && used[field];
  if (!field || !feature) return null;
  return new AppError(
    'FEATURE_NOT_AVAILABLE',
    `OpenAI did not accept ${feature} for this project or model (a preview OpenAI enables per project): ${upstreamMessage(error, scrub)}`,
    {
      cause: error,
      details: {feature, field: field === named ? scrub(error.param!) : field, ...upstreamDetails(error)},
    },
  );
}

function upstreamDetails(error: ApiError): Record<string, unknown> {
  return {
    upstream_status: error.status ?? null,
    upstream_code: typeof error.code === 'string' ? error.code : null,
    upstream_request_id: error.requestID ?? null,
  };
}

/** OpenAI's message, without any secret it may quote, cut short (after scrubbing: no key is cut in half). */
function upstreamMessage(error: {message: string; error?: unknown}, scrub: Scrub): string {
  const body = error.error as {message?: unknown} | undefined;
  const text = typeof body?.message === 'string' ? body.message : error.message;
  return scrub(text).slice(0, 500);
}

function retryAfterSeconds(headers: Headers | undefined): number | undefined {
  const ms = Number(headers?.get('retry-after-ms'));
  if (Number.isFinite(ms) && ms > 0) return Math.ceil(ms / 1000);
  const value = headers?.get('retry-after');
  if (!value) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, Math.ceil(seconds));
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, Math.ceil((date - Date.now()) / 1000));
}
