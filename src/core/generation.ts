import {z} from 'zod';
import type {ModelCatalogue} from './catalogue';
import {AppError, validationError, zodProblems, type FieldProblem} from './errors';
import {imageBytesFromBase64, type DecodedBase64, type ImageBytes} from './image-bytes';
import {
  BACKGROUNDS,
  COMPLEXITIES,
  INPUT_FIDELITIES,
  MAX_IMAGES_PER_REQUEST,
  OUTPUT_FORMATS,
  QUALITIES,
  STYLES,
  customSizeProblem,
  parseSize,
  type Quality,
  type ModelEntry,
  type ModelRules,
} from './models';

/**
 * What a caller may ask for, declared once. A parameter is a line in
 * `UpstreamParametersSchema` (sent to OpenAI under its own name, stored with
 * the job, shown in responses and in the OpenAPI document) or in `jobFields`
 * (ours: how the job is run and kept). Everything else is derived from these
 * schemas; the OpenAI adapter checks at compile time that every upstream
 * parameter is one the SDK knows, with a type the SDK accepts. Which model
 * takes which value is the catalogue's business (models.ts).
 */

/** Idempotency keys: what fits in an HTTP header without escaping. */
export const IDEMPOTENCY_KEY_FORMAT = /^[\x21-\x7e]{1,255}$/;

/** Control characters other than tab, newline and carriage return. */
// eslint-disable-next-line no-control-regex
const CONTROL_CHARS = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/;

const promptText = z
  .string()
  .trim()
  .min(1, 'must not be empty')
  .refine(s => !CONTROL_CHARS.test(s), 'must not contain control characters');

/**
 * Metadata keys: what every store keeps and filters on as is. Firestore
 * reserves field names of the form __name__, so they are refused here,
 * before anything is paid for, rather than by the store after.
 */
export const METADATA_KEY_FORMAT = /^(?!__.*__$)[A-Za-z0-9_.-]{1,64}$/;

const metadataKey = z
  .string()
  .regex(METADATA_KEY_FORMAT, 'keys are 1-64 characters of letters, digits, _ . - (not __name__)');

/** Small caller-supplied labels stored with the job (for example a caller's own ids). */
export const JobMetadataSchema = z
  .record(metadataKey, z.string().max(512, 'values are at most 512 characters'))
  .refine(m => Object.keys(m).length <= 20, 'at most 20 keys')
  .describe('String labels stored with the job, at most 20 keys.');

const imageCount = z.int().min(1).max(MAX_IMAGES_PER_REQUEST);
const endUserId = z.string().min(1).max(256);

const svgModel = z.string().min(1).max(64).describe('The model that authors the SVG.');

/** SVG options; the SDK's generate type requires their `model`, its edit type does not. */
function svgOptions<M extends z.ZodString | z.ZodOptional<z.ZodString>>(model: M) {
  return z
    .strictObject({
      model,
      reasoning: z
        .strictObject({
          effort: z.enum(['none', 'minimal', 'low', 'medium', 'high', 'xhigh', 'max']).optional(),
        })
        .optional(),
    })
    .describe('SVG output only, for projects with SVG model selection.');
}

/** Parameters passed to OpenAI as they are. */
export const UpstreamParametersSchema = z.object({
  size: z.string().max(16).optional().describe('WIDTHxHEIGHT or `auto`; what each model takes: GET /models.'),
  quality: z
    .enum(QUALITIES)
    .optional()
    .describe('Per model (GET /models); standard and hd are dall-e-3 terms.'),
  style: z.enum(STYLES).optional().describe('dall-e-3 only (retired): carried over as a warning.'),
  background: z.enum(BACKGROUNDS).optional().describe('transparent needs output_format png or webp.'),
  output_format: z
    .enum(OUTPUT_FORMATS)
    .optional()
    .describe('gif and svg are previews OpenAI enables per project.'),
  output_compression: z.int().min(0).max(100).optional().describe('0-100, jpeg and webp only.'),
  moderation: z.enum(['low', 'auto']).optional(),
  complexity: z.enum(COMPLEXITIES).optional().describe('Planning effort, apart from rendering quality.'),
  safety_identifier: endUserId
    .optional()
    .describe('A stable, hashed id of your end user, for OpenAI abuse checks.'),
  frame_count: z.int().min(2).max(16).optional().describe('GIF frames, 2-16 (OpenAI defaults to 9).'),
  frame_duration_ms: z
    .int()
    .min(1)
    .max(2_147_483_647)
    .optional()
    .describe('Delay per GIF frame (OpenAI defaults to 200, rounds to 10 ms and caps at 655,350).'),
  svg: svgOptions(svgModel).optional(),
  input_fidelity: z
    .enum(INPUT_FIDELITIES)
    .optional()
    .describe('Edits: how closely to keep the input images (per model; GET /models).'),
});

/** Parameters one operation does not take (the SDK's generate and edit parameters differ). */
export const NOT_FOR_GENERATE = ['input_fidelity'] as const;
export const NOT_FOR_EDIT = ['moderation', 'style'] as const;

export type UpstreamParameters = z.output<typeof UpstreamParametersSchema>;
export const UPSTREAM_PARAMETER_NAMES = Object.keys(
  UpstreamParametersSchema.shape,
) as (keyof UpstreamParameters)[];

/** How a job is run and kept: ours, never sent upstream as such. */
const jobFields = {
  count: imageCount.optional().describe('Number of images, 1-10 (alias `n`).'),
  n: imageCount.optional().describe('Alias of `count`.'),
  model: z.string().max(64).optional().describe('Image model (GET /models); defaults to DEFAULT_MODEL.'),
  user: endUserId.optional().describe('Deprecated alias of `safety_identifier`.'),
  // Sent by clients of OpenAI's SDK; images are stored, so only URLs can be answered.
  response_format: z
    .enum(['url'])
    .optional()
    .describe('Only `url`: images are stored and answered by URL, never as `b64_json`.'),
  metadata: JobMetadataSchema.optional(),
  allow_partial: z
    .boolean()
    .optional()
    .describe('With count > 1: complete with the images that succeeded and report the failed calls.'),
  idempotency_key: z
    .string()
    .regex(IDEMPOTENCY_KEY_FORMAT, '1-255 printable ASCII characters without spaces')
    .optional()
    .describe('Same as the Idempotency-Key header, for callers that cannot set headers.'),
  stream: z
    .boolean()
    .optional()
    .describe(
      'Answer with Server-Sent Events: partial images while OpenAI works, then the job (also Accept: text/event-stream, unless this is false).',
    ),
  partial_images: z
    .int()
    .min(0)
    .max(3)
    .optional()
    .describe('Partial images per image when streaming, 0-3 (default 2).'),
};

/** Partial images per image when a stream names none. */
export const DEFAULT_PARTIAL_IMAGES = 2;

const requestFields = {...jobFields, ...UpstreamParametersSchema.omit(only(NOT_FOR_GENERATE)).shape};
const editFields = {
  ...jobFields,
  ...UpstreamParametersSchema.omit(only(NOT_FOR_EDIT)).shape,
  svg: svgOptions(svgModel.optional()).optional(),
  // dall-e-3's hd never edited anything.
  quality: z
    .enum(QUALITIES.filter(quality => quality !== 'hd') as [Quality, ...Quality[]])
    .optional()
    .describe('Per model (GET /models).'),
};

/** `{name: true}` for each name, as zod's omit() takes them. */
function only<K extends string>(names: readonly K[]): Record<K, true> {
  return Object.fromEntries(names.map(name => [name, true])) as Record<K, true>;
}

/** At most this many images go into one edit (OpenAI's limit). */
export const MAX_EDIT_IMAGES = 16;

/**
 * Where an image to edit comes from: an image this service stored, an object
 * in Cloud Storage, or the bytes themselves. Multipart uploads arrive as bytes.
 */
export type ImageReference =
  | {kind: 'image_id'; id: string}
  | {kind: 'gcs_uri'; bucket: string; path: string}
  | {kind: 'bytes'; data: ImageBytes; filename: string};

const GCS_URI = /^gs:\/\/([a-z0-9][a-z0-9._-]{1,221}[a-z0-9])\/(.{1,1024})$/;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** The base64 values the body reader decoded already, while parseEditBody validates that body (synchronously). */
let decodedInScope: DecodedBase64 | undefined;

export const ImageReferenceSchema = z
  .strictObject({
    image_id: z.string().max(64).optional().describe('An image this service stored (one of yours).'),
    gcs_uri: z
      .string()
      .regex(GCS_URI, 'must be gs://bucket/path')
      .optional()
      .describe("gs://bucket/path in this function's bucket or one named in EDIT_SOURCE_BUCKETS."),
    b64_json: z
      .string()
      .min(4)
      .regex(BASE64, 'must be base64')
      .optional()
      .describe('The image itself, base64-encoded (PNG, WebP or JPEG).'),
  })
  .refine(
    ref => [ref.image_id, ref.gcs_uri, ref.b64_json].filter(v => v !== undefined).length === 1,
    'give exactly one of image_id, gcs_uri, b64_json',
  )
  .transform((ref, ctx): ImageReference => {
    if (ref.image_id !== undefined) return {kind: 'image_id', id: ref.image_id};
    const uri = ref.gcs_uri === undefined ? null : GCS_URI.exec(ref.gcs_uri);
    if (uri) return {kind: 'gcs_uri', bucket: uri[1]!, path: uri[2]!};
    const text = ref.b64_json ?? '';
    const data = decodedInScope?.get(text) ?? imageBytesFromBase64(text);
    if (data.size === 0) ctx.addIssue({code: 'custom', message: 'b64_json holds no bytes'});
    return {kind: 'bytes', data, filename: 'image'};
  })
  .meta({id: 'ImageReference', description: 'One of image_id, gcs_uri or b64_json.'});

/** What an edit works from: 1-16 images, and a mask or a markup. */
export interface EditInputs {
  images: ImageReference[];
  mask?: ImageReference;
  markup?: ImageReference;
  /** What the images are called in the body as sent: `images` (JSON) or `image` (multipart). */
  imagesField?: string;
}

/**
 * A request as the caller shaped it, before the model's rules are applied.
 * `fieldPrefix` is where its fields sit in the body, so errors name them as sent.
 */
export interface GenerateRequest {
  source: 'generate' | 'legacy' | 'edit';
  fieldPrefix: string;
  prompt: string;
  count: number | undefined;
  n: number | undefined;
  model: string | undefined;
  parameters: UpstreamParameters;
  /** Sent as `user`, the deprecated name of safety_identifier. */
  userAlias: boolean;
  /** Asked to stream, with this many partial images per image; null when not. */
  stream: {partialImages: number} | null;
  /** `stream` as sent: undefined when the body does not say, so an Accept header may ask. */
  streamAsSent: boolean | undefined;
  /** `partial_images` as sent, for a stream asked for another way (an Accept header). */
  partialImages: number | undefined;
  metadata: Record<string, string>;
  allowPartial: boolean;
  idempotencyKey: string | undefined;
  /** Set for an edit: the images it works from. */
  edit: EditInputs | null;
}

/**
 * The request as Accept: text/event-stream asks for it: streamed, as
 * `stream: true` would have made it, unless the body says `stream: false`.
 */
export function streamed(request: GenerateRequest): GenerateRequest {
  if (request.stream || request.streamAsSent === false) return request;
  return {...request, stream: {partialImages: request.partialImages ?? DEFAULT_PARTIAL_IMAGES}};
}

type RequestFields = z.output<z.ZodObject<typeof requestFields>> | z.output<z.ZodObject<typeof editFields>>;

function toRequest(
  prompt: string,
  fields: RequestFields,
  source: GenerateRequest['source'],
  fieldPrefix: string,
  edit: EditInputs | null = null,
): GenerateRequest {
  const parameters: UpstreamParameters = {};
  for (const key of UPSTREAM_PARAMETER_NAMES) {
    const value = (fields as Record<string, unknown>)[key];
    if (value !== undefined) (parameters as Record<string, unknown>)[key] = value;
  }
  // As OpenAI does: a non-empty safety_identifier wins over `user`.
  const userAlias = parameters.safety_identifier === undefined && fields.user !== undefined;
  if (userAlias) parameters.safety_identifier = fields.user;
  return {
    source,
    fieldPrefix,
    prompt,
    count: fields.count,
    n: fields.n,
    model: fields.model,
    parameters,
    userAlias,
    stream: fields.stream ? {partialImages: fields.partial_images ?? DEFAULT_PARTIAL_IMAGES} : null,
    streamAsSent: fields.stream,
    partialImages: fields.partial_images,
    metadata: fields.metadata ?? {},
    allowPartial: fields.allow_partial ?? false,
    idempotencyKey: fields.idempotency_key,
    edit,
  };
}

export const GenerateRequestSchema = z
  .strictObject({prompt: promptText.describe('What to draw.'), ...requestFields})
  .meta({id: 'GenerateRequest', description: 'Rich generate payload.'})
  .transform(({prompt, ...fields}) => toRequest(prompt, fields, 'generate', ''));

export const LegacyGenerateRequestSchema = z
  .strictObject({
    input: z.strictObject({
      body: z.strictObject({prompt_image: promptText, ...requestFields}),
    }),
  })
  .meta({
    id: 'LegacyGenerateRequest',
    description: 'Legacy payload: {"input":{"body":{"prompt_image":"..."}}}.',
  })
  .transform(({input: {body}}) => {
    const {prompt_image, ...fields} = body;
    return toRequest(prompt_image, fields, 'legacy', 'input.body.');
  });

/** The inputs of an edit, with each image given as `reference` says. */
function editInputFields(reference: z.ZodType<ImageReference>) {
  return {
    images: z
      .array(reference)
      .min(1, 'give at least one image')
      .max(MAX_EDIT_IMAGES, `at most ${MAX_EDIT_IMAGES} images`)
      .describe('The images to edit; the mask or markup applies to the first.'),
    mask: reference
      .optional()
      .describe(
        'A PNG with an alpha channel, the size of the first image: its transparent pixels are what to edit.',
      ),
    markup: reference
      .optional()
      .describe(
        'A transparent PNG laid over the first image to guide the edit (models that take it; never with mask).',
      ),
  };
}

type EditBody = z.output<z.ZodObject<typeof editFields>> & {
  prompt: string;
  images: ImageReference[];
  mask?: ImageReference | undefined;
  markup?: ImageReference | undefined;
};

/** The request an edit body makes; `imagesField` is what its images were called. */
function toEditRequest(imagesField: string) {
  return ({prompt, images, mask, markup, ...fields}: EditBody): GenerateRequest =>
    toRequest(prompt, fields, 'edit', '', {
      images,
      ...(mask ? {mask} : {}),
      ...(markup ? {markup} : {}),
      imagesField,
    });
}

const editPrompt = promptText.describe('What to change.');

export const EditRequestSchema = z
  .strictObject({prompt: editPrompt, ...editInputFields(ImageReferenceSchema), ...editFields})
  .meta({id: 'EditRequest', description: 'Edit images into new ones.'})
  .transform(toEditRequest('images'));

/** An uploaded file, made into a reference by the API layer (a multipart body). */
const UploadedImageSchema = z.custom<ImageReference>(
  value => typeof value === 'object' && value !== null && (value as ImageReference).kind === 'bytes',
  'must be a file',
);

/**
 * An edit whose images were uploaded (multipart/form-data, as OpenAI's own
 * endpoint takes them): the same fields and rules as EditRequestSchema, the
 * text fields already given their types, each upload a `bytes` reference.
 */
export const EditUploadSchema = z
  .strictObject({prompt: editPrompt, ...editInputFields(UploadedImageSchema), ...editFields})
  .transform(toEditRequest('image'));

/** The fields of an edit besides its images, as documented (a multipart body documents them too). */
export const EDIT_FIELD_SCHEMAS = {prompt: editPrompt, ...editFields};

/**
 * The body's fields, with those set to null left out: the SDK's types let
 * every parameter be null, meaning "not given", and clients send it so.
 */
function givenFields(body: unknown): Record<string, unknown> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw validationError([{field: '(body)', message: 'must be a JSON object'}]);
  }
  return Object.fromEntries(Object.entries(body).filter(([, value]) => value !== null));
}

/**
 * Validates a parsed JSON edit body; throws VALIDATION_ERROR naming every
 * problem. `decoded`: b64_json values the reader decoded as they arrived,
 * each standing in the body as its token (base64 text itself, so the schema
 * judges it as it would the value).
 */
export function parseEditBody(body: unknown, decoded?: DecodedBase64): GenerateRequest {
  decodedInScope = decoded;
  try {
    const parsed = EditRequestSchema.safeParse(givenFields(body));
    if (!parsed.success) throw validationError(zodProblems(parsed.error));
    return parsed.data;
  } finally {
    decodedInScope = undefined;
  }
}

/** Either payload, as documented; `parseGenerateBody` picks the one the body is shaped as. */
export const GenerateBodySchema = z.union([GenerateRequestSchema, LegacyGenerateRequestSchema]);

/** Validates a parsed JSON body as one of the two payloads; throws VALIDATION_ERROR naming every problem. */
export function parseGenerateBody(body: unknown): GenerateRequest {
  const fields = givenFields(body);
  const schema = Object.hasOwn(fields, 'input') ? LegacyGenerateRequestSchema : GenerateRequestSchema;
  const parsed = schema.safeParse(fields);
  if (!parsed.success) throw validationError(zodProblems(parsed.error));
  return parsed.data;
}

export const WARNING_CODES = [
  'MODEL_DEPRECATED',
  'MODEL_REPLACED',
  'PARAMETER_TRANSLATED',
  'PARAMETER_DROPPED',
  'PARAMETER_DEPRECATED',
  'IMAGE_RESIZED',
] as const;

/** Something the caller should know about how the request was run; never a failure. */
export interface GenerationWarning {
  code: (typeof WARNING_CODES)[number];
  message: string;
  requested_model: string;
  /** When OpenAI stops (or stopped) serving the requested model; null when none is announced. */
  shutdown_date: string | null;
  /** The model the images are made with. */
  model: string;
  field?: string;
}

/** How a job is run upstream: which model, with which parameters. */
export interface RunPlan {
  model: string;
  /** Sent upstream as they are; `size` is always resolved. */
  parameters: UpstreamParameters & {size: string};
  /** Set when the model cannot make the size asked for: images are made at `size`, then resized to this. */
  resizeTo: {width: number; height: number} | null;
  /** Images one upstream call may make; the count is split into calls of at most this many. */
  imagesPerCall: number;
  /**
   * Streamed calls: partial images per image (one image per call). Null when
   * not streamed, or when the model or format cannot stream (GIF, SVG).
   */
  partialImages: number | null;
  warnings: GenerationWarning[];
}

/** A validated, fully resolved generation the use case can run as is. */
export interface GenerateCommand {
  source: GenerateRequest['source'];
  prompt: string;
  count: number;
  requestedModel: string;
  /** The parameters as asked for (what makes two requests the same). */
  requested: UpstreamParameters;
  plan: RunPlan;
  /** What to run instead if OpenAI says `plan.model` is gone (an early shutdown, a skewed clock). */
  fallback: RunPlan | null;
  /** Set for an edit: the images it works from (read and checked before any upstream call). */
  edit: EditInputs | null;
  metadata: Record<string, string>;
  allowPartial: boolean;
  idempotencyKey?: string;
}

export interface PlanContext {
  catalogue: ModelCatalogue;
  defaultModel: string;
  /** `reject`: a model past its shutdown is refused (MODEL_RETIRED) instead of replaced. */
  retiredModels: 'replace' | 'reject';
  /** Today, UTC (YYYY-MM-DD): what is retired depends on it. */
  day: string;
}

const characters = (text: string) => [...text].length;

/** Every problem of `parameters` against a model's rules, with fields named as the caller sent them. */
export function ruleProblems(
  modelId: string,
  rules: ModelRules,
  request: {prompt: string; parameters: UpstreamParameters},
  field: (name: string) => string,
  promptField: string,
): FieldProblem[] {
  const problems: FieldProblem[] = [];
  const p = request.parameters;
  const refuse = (name: keyof UpstreamParameters, message: string) =>
    problems.push({field: field(name), message});
  const notTaken = (name: keyof UpstreamParameters) => refuse(name, `${modelId} does not take ${name}`);
  const oneOf = (name: keyof UpstreamParameters, value: unknown, allowed: readonly string[]) => {
    if (value === undefined) return;
    if (allowed.length === 0) notTaken(name);
    else if (!allowed.includes(value as string)) {
      refuse(name, `'${String(value)}' is invalid for ${modelId}; allowed: ${allowed.join(', ')}`);
    }
  };

  const length = characters(request.prompt);
  if (length > rules.maxPromptChars) {
    problems.push({
      field: promptField,
      message: `is ${length} characters; ${modelId} accepts at most ${rules.maxPromptChars}`,
    });
  }
  if (p.size !== undefined && !rules.sizes.includes(p.size)) {
    const reason = rules.customSizes
      ? customSizeProblem(p.size, rules.customSizes, {checkMinimum: false})
      : 'not supported';
    if (reason !== null) {
      const custom = rules.customSizes ? ' or a custom WIDTHxHEIGHT' : '';
      refuse(
        'size',
        `'${p.size}' is invalid for ${modelId} (${reason}); allowed: ${rules.sizes.join(', ')}${custom}`,
      );
    }
  }
  oneOf('quality', p.quality, rules.qualities);
  oneOf('style', p.style, rules.styles);
  oneOf('background', p.background, rules.backgrounds);
  oneOf('output_format', p.output_format, rules.outputFormats);
  oneOf('input_fidelity', p.input_fidelity, rules.inputFidelity);
  if (p.moderation !== undefined && !rules.moderation) notTaken('moderation');
  if (p.complexity !== undefined && !rules.complexity) notTaken('complexity');

  const format = p.output_format ?? 'png';
  if (p.output_compression !== undefined) {
    if (!rules.compression) notTaken('output_compression');
    else if (format !== 'jpeg' && format !== 'webp')
      refuse('output_compression', 'only applies to output_format jpeg or webp');
  }
  if (p.background === 'transparent' && format !== 'png' && format !== 'webp') {
    refuse('background', 'transparent needs output_format png or webp');
  }
  for (const name of ['frame_count', 'frame_duration_ms'] as const) {
    if (p[name] !== undefined && format !== 'gif') refuse(name, 'only applies to output_format gif');
  }
  if (p.svg !== undefined && format !== 'svg') refuse('svg', 'only applies to output_format svg');
  return problems;
}

/** What an edit asks that the model cannot do, before any input is read. */
function editProblems(
  modelId: string,
  rules: ModelRules,
  request: GenerateRequest,
  field: (name: string) => string,
): FieldProblem[] {
  const problems: FieldProblem[] = [];
  const edit = request.edit!;
  if (!rules.edits) problems.push({field: field('model'), message: `${modelId} does not edit images`});
  if (edit.markup && !rules.markup) {
    problems.push({field: field('markup'), message: `${modelId} does not take markup`});
  }
  if (edit.markup && edit.mask) {
    problems.push({field: field('markup'), message: 'cannot be combined with mask; send one of them'});
  }
  if (edit.mask && request.parameters.output_format === 'gif') {
    problems.push({field: field('mask'), message: 'GIF output takes no mask'});
  }
  return problems;
}

/**
 * Partial images a streamed call asks for, or null when this model and format
 * do not stream, or when the images are resized: a partial would show the
 * size made upstream, not the one stored.
 */
function partialImagesFor(
  rules: ModelRules,
  parameters: UpstreamParameters,
  stream: GenerateRequest['stream'],
  resizeTo: RunPlan['resizeTo'],
): number | null {
  const format = parameters.output_format ?? 'png';
  if (!stream || resizeTo || !rules.streams || format === 'gif' || format === 'svg') return null;
  return stream.partialImages;
}

/** How a plan splits its images into calls: SVG, and every streamed image, one per call. */
function callShape(
  rules: ModelRules,
  parameters: UpstreamParameters,
  stream: GenerateRequest['stream'],
  resizeTo: RunPlan['resizeTo'] = null,
): Pick<RunPlan, 'imagesPerCall' | 'partialImages'> {
  const partialImages = partialImagesFor(rules, parameters, stream, resizeTo);
  const single = parameters.output_format === 'svg' || partialImages !== null;
  return {imagesPerCall: single ? 1 : rules.maxImagesPerCall, partialImages};
}

/**
 * Checks a request against its model's rules and resolves what it leaves
 * open. A model past its shutdown is run on its replacement, with the
 * request's parameters translated and a warning for each change. Every
 * problem is reported, not just the first; nothing here costs an upstream call.
 */
export function planGeneration(request: GenerateRequest, context: PlanContext): GenerateCommand {
  const {catalogue, day} = context;
  const field = (name: string) => `${request.fieldPrefix}${name}`;
  const promptField = field(request.source === 'legacy' ? 'prompt_image' : 'prompt');
  const requestedModel = request.model ?? context.defaultModel;
  const entry = catalogue.get(requestedModel);
  if (!entry) {
    throw validationError([
      {
        field: field('model'),
        message: `'${requestedModel}' is not a known model; allowed: ${catalogue.liveIds(day).join(', ')}`,
      },
    ]);
  }
  const problems = ruleProblems(entry.id, entry.rules, request, field, promptField);
  if (request.edit) problems.push(...editProblems(entry.id, entry.rules, request, field));
  if (request.count !== undefined && request.n !== undefined && request.count !== request.n) {
    problems.unshift({field: field('count'), message: '`count` and `n` disagree; send one of them'});
  }
  if (problems.length > 0) throw validationError(problems);

  const status = catalogue.status(entry.id, day);
  const successor = catalogue.successor(entry.id, day);
  // What callers got before sizes were optional upstream; every model makes it.
  const size = request.parameters.size ?? '1024x1024';
  const base: RunPlan = {
    model: entry.id,
    parameters: {...request.parameters, size},
    resizeTo: null,
    ...callShape(entry.rules, request.parameters, request.stream),
    warnings: [],
  };
  if (request.userAlias) {
    base.warnings.push(
      warning(
        entry,
        entry.id,
        'PARAMETER_DEPRECATED',
        field('user'),
        '`user` is deprecated; send `safety_identifier`',
      ),
    );
  }
  let plan: RunPlan;
  let fallback: RunPlan | null = null;
  if (status === 'retired') {
    if (!successor || context.retiredModels === 'reject') {
      throw new AppError(
        'MODEL_RETIRED',
        `${entry.id} was shut down on ${entry.shutdownDate}` +
          (successor ? `; use ${successor.id}` : '; choose another model (GET /models)'),
        {
          details: {
            fields: [{field: field('model'), message: 'retired'}],
            replacement: successor?.id ?? null,
          },
        },
      );
    }
    plan = translate(entry, successor, base, field, request.stream);
  } else {
    const deprecated =
      status === 'deprecated'
        ? [
            warning(
              entry,
              entry.id,
              'MODEL_DEPRECATED',
              field('model'),
              `${entry.id} shuts down on ${entry.shutdownDate}` +
                (successor ? `; move to ${successor.id}` : ''),
            ),
          ]
        : [];
    plan = {...base, warnings: [...deprecated, ...base.warnings]};
    // A model OpenAI withdraws early still runs, on its replacement (see the use case).
    if (successor) fallback = translate(entry, successor, base, field, request.stream);
  }
  return {
    source: request.source,
    prompt: request.prompt,
    count: request.count ?? request.n ?? 1,
    requestedModel: entry.id,
    requested: request.parameters,
    plan,
    fallback,
    edit: request.edit,
    metadata: request.metadata,
    allowPartial: request.allowPartial,
    ...(request.idempotencyKey !== undefined ? {idempotencyKey: request.idempotencyKey} : {}),
  };
}

function warning(
  requested: ModelEntry,
  model: string,
  code: GenerationWarning['code'],
  field: string,
  message: string,
): GenerationWarning {
  return {code, message, requested_model: requested.id, shutdown_date: requested.shutdownDate, model, field};
}

/**
 * The plan of `requested` carried over to `target`: legacy qualities in the
 * target's terms, what it cannot take dropped, a size it cannot make made at
 * its nearest size and resized. Each change is a warning.
 */
export function translate(
  requested: ModelEntry,
  target: ModelEntry,
  base: RunPlan,
  field: (name: string) => string,
  stream: GenerateRequest['stream'] = null,
): RunPlan {
  const rules = target.rules;
  const note = (code: GenerationWarning['code'], name: string, message: string) =>
    warnings.push(warning(requested, target.id, code, field(name), message));
  const warnings: GenerationWarning[] = [
    ...base.warnings.map(w => ({...w, model: target.id})),
    warning(
      requested,
      target.id,
      'MODEL_REPLACED',
      field('model'),
      `${requested.id} is shut down; the images are made with ${target.id}`,
    ),
  ];
  const parameters: UpstreamParameters & {size: string} = {...base.parameters};

  if (requested.legacy) {
    const asked = parameters.quality;
    const quality = asked === undefined ? requested.legacy.defaultQuality : requested.legacy.qualities[asked];
    if (quality !== undefined) parameters.quality = quality;
    if (asked !== undefined && quality !== asked) {
      note(
        'PARAMETER_TRANSLATED',
        'quality',
        `quality '${asked}' of ${requested.id} is '${quality}' on ${target.id}`,
      );
    }
  }
  const dropIf = (name: keyof UpstreamParameters, taken: boolean) => {
    if (parameters[name] === undefined || taken) return;
    note(
      'PARAMETER_DROPPED',
      name,
      `${target.id} does not take ${name} '${JSON.stringify(parameters[name])}'; describe it in the prompt instead`,
    );
    delete parameters[name];
  };
  const has = <T>(values: readonly T[], value: T | undefined) =>
    value !== undefined && values.includes(value);
  dropIf('style', has(rules.styles, parameters.style));
  dropIf('quality', has(rules.qualities, parameters.quality));
  dropIf('background', has(rules.backgrounds, parameters.background));
  dropIf('output_format', has(rules.outputFormats, parameters.output_format));
  dropIf('moderation', rules.moderation);
  dropIf('complexity', rules.complexity);
  const format = parameters.output_format ?? 'png';
  dropIf('output_compression', rules.compression && (format === 'jpeg' || format === 'webp'));
  dropIf('frame_count', format === 'gif');
  dropIf('frame_duration_ms', format === 'gif');
  dropIf('svg', format === 'svg');
  dropIf('input_fidelity', has(rules.inputFidelity, parameters.input_fidelity));

  let resizeTo: RunPlan['resizeTo'] = null;
  const size = parameters.size;
  const takesSize =
    rules.sizes.includes(size) ||
    (rules.customSizes !== null && customSizeProblem(size, rules.customSizes) === null);
  if (!takesSize) {
    const wanted = parseSize(size);
    const nearest = wanted ? nearestSize(rules, wanted) : null;
    if (wanted && nearest && format === 'svg') {
      // A vector image is drawn at any size: it is kept as made, never resized.
      parameters.size = nearest;
      note('PARAMETER_TRANSLATED', 'size', `${target.id} cannot make ${size}: the SVG is made at ${nearest}`);
    } else if (wanted && nearest) {
      parameters.size = nearest;
      resizeTo = wanted;
      note(
        'IMAGE_RESIZED',
        'size',
        `${target.id} cannot make ${size}: made at ${nearest}, then resized to ${size}`,
      );
    } else {
      note(
        'PARAMETER_DROPPED',
        'size',
        `${target.id} does not take size '${size}'; it sizes the image itself`,
      );
      parameters.size = 'auto';
    }
  }
  return {
    model: target.id,
    parameters,
    resizeTo,
    ...callShape(rules, parameters, stream, resizeTo),
    warnings,
  };
}

/** The model's named size closest in shape to `wanted`, the smallest of those that are not smaller. */
function nearestSize(rules: ModelRules, wanted: {width: number; height: number}): string | null {
  const aspect = Math.log(wanted.width / wanted.height);
  const candidates = rules.sizes.flatMap(size => {
    const dimensions = parseSize(size);
    return dimensions ? [{size, ...dimensions}] : [];
  });
  candidates.sort((a, b) => {
    const shape =
      Math.abs(Math.log(a.width / a.height) - aspect) - Math.abs(Math.log(b.width / b.height) - aspect);
    if (Math.abs(shape) > 1e-9) return shape;
    const aCovers = a.width >= wanted.width && a.height >= wanted.height;
    const bCovers = b.width >= wanted.width && b.height >= wanted.height;
    if (aCovers !== bCovers) return aCovers ? -1 : 1;
    return a.width * a.height - b.width * b.height;
  });
  return candidates[0]?.size ?? null;
}
