import {z} from 'zod';
import {validationError, zodProblems, type FieldProblem} from './errors';
import {
  MAX_IMAGES_PER_REQUEST,
  MODEL_IDS,
  MODELS,
  OUTPUT_FORMATS,
  QUALITIES,
  STYLES,
  customSizeProblem,
  type ModelId,
} from './models';

/**
 * What a caller may ask for, declared once. A parameter is a line in
 * `UpstreamParametersSchema` (sent to OpenAI under its own name, stored with
 * the job, shown in responses and in the OpenAPI document) or in `jobFields`
 * (ours: how the job is run and kept). Everything else is derived from these
 * schemas; the OpenAI adapter checks at compile time that every upstream
 * parameter is one the SDK knows, with a type the SDK accepts.
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

const metadataKey = z
  .string()
  .regex(/^[A-Za-z0-9_.-]{1,64}$/, 'keys are 1-64 characters of letters, digits, _ . -');

/** Small caller-supplied labels stored with the job (for example a caller's own ids). */
export const JobMetadataSchema = z
  .record(metadataKey, z.string().max(512, 'values are at most 512 characters'))
  .refine(m => Object.keys(m).length <= 20, 'at most 20 keys')
  .describe('String labels stored with the job, at most 20 keys.');

const imageCount = z.int().min(1).max(MAX_IMAGES_PER_REQUEST);

/** Parameters passed to OpenAI as they are. Per-model rules are in models.ts. */
export const UpstreamParametersSchema = z.object({
  size: z.string().max(16).optional().describe('WIDTHxHEIGHT or `auto`, per model.'),
  quality: z.enum(QUALITIES).optional().describe('Per model: low|medium|high|auto, standard|hd.'),
  style: z.enum(STYLES).optional().describe('dall-e-3 only.'),
  background: z.enum(['transparent', 'opaque', 'auto']).optional(),
  output_format: z.enum(OUTPUT_FORMATS).optional(),
  output_compression: z.int().min(0).max(100).optional(),
  moderation: z.enum(['low', 'auto']).optional(),
  user: z.string().min(1).max(256).optional().describe('End-user id passed to OpenAI.'),
});

export type UpstreamParameters = z.output<typeof UpstreamParametersSchema>;
export const UPSTREAM_PARAMETER_NAMES = Object.keys(
  UpstreamParametersSchema.shape,
) as (keyof UpstreamParameters)[];

/** How a job is run and kept: ours, never sent upstream. */
const jobFields = {
  count: imageCount.optional().describe('Number of images, 1-10 (alias `n`).'),
  n: imageCount.optional().describe('Alias of `count`.'),
  model: z.enum(MODEL_IDS).optional().describe('Image model; defaults to DEFAULT_MODEL.'),
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
};

const requestFields = {...jobFields, ...UpstreamParametersSchema.shape};

/**
 * A request as the caller shaped it, before the model's rules are applied.
 * `fieldPrefix` is where its fields sit in the body, so errors name them as sent.
 */
export interface GenerateRequest {
  source: 'generate' | 'legacy';
  fieldPrefix: string;
  prompt: string;
  count: number | undefined;
  n: number | undefined;
  model: ModelId | undefined;
  parameters: UpstreamParameters;
  metadata: Record<string, string>;
  allowPartial: boolean;
  idempotencyKey: string | undefined;
}

type RequestFields = z.output<z.ZodObject<typeof requestFields>>;

function toRequest(
  prompt: string,
  fields: RequestFields,
  source: GenerateRequest['source'],
  fieldPrefix: string,
): GenerateRequest {
  const parameters: UpstreamParameters = {};
  for (const key of UPSTREAM_PARAMETER_NAMES) {
    if (fields[key] !== undefined) (parameters as Record<string, unknown>)[key] = fields[key];
  }
  return {
    source,
    fieldPrefix,
    prompt,
    count: fields.count,
    n: fields.n,
    model: fields.model,
    parameters,
    metadata: fields.metadata ?? {},
    allowPartial: fields.allow_partial ?? false,
    idempotencyKey: fields.idempotency_key,
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

/** Either payload, as documented; `parseGenerateBody` picks the one the body is shaped as. */
export const GenerateBodySchema = z.union([GenerateRequestSchema, LegacyGenerateRequestSchema]);

/** Validates a parsed JSON body as one of the two payloads; throws VALIDATION_ERROR naming every problem. */
export function parseGenerateBody(body: unknown): GenerateRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw validationError([{field: '(body)', message: 'must be a JSON object'}]);
  }
  const schema = Object.hasOwn(body, 'input') ? LegacyGenerateRequestSchema : GenerateRequestSchema;
  const parsed = schema.safeParse(body);
  if (!parsed.success) throw validationError(zodProblems(parsed.error));
  return parsed.data;
}

/** A validated, fully resolved generation the use case can run as is. */
export interface GenerateCommand {
  source: GenerateRequest['source'];
  prompt: string;
  count: number;
  model: ModelId;
  /** Sent upstream as they are; `size` is always resolved. */
  parameters: UpstreamParameters & {size: string};
  metadata: Record<string, string>;
  allowPartial: boolean;
  idempotencyKey?: string;
}

/**
 * Checks a request against its model's rules and resolves what it leaves
 * open. Every problem is reported, not just the first; nothing here costs an
 * upstream call.
 */
export function planGeneration(request: GenerateRequest, defaultModel: ModelId): GenerateCommand {
  const problems: FieldProblem[] = [];
  const field = (name: string) => `${request.fieldPrefix}${name}`;
  const model = request.model ?? defaultModel;
  const rules = MODELS[model];
  const {parameters} = request;

  if (request.count !== undefined && request.n !== undefined && request.count !== request.n) {
    problems.push({field: field('count'), message: '`count` and `n` disagree; send one of them'});
  }

  if (request.prompt.length > rules.maxPromptChars) {
    problems.push({
      field: field(request.source === 'legacy' ? 'prompt_image' : 'prompt'),
      message: `is ${request.prompt.length} characters; ${model} accepts at most ${rules.maxPromptChars}`,
    });
  }

  const size = parameters.size ?? rules.defaultSize;
  if (!rules.sizes.includes(size)) {
    const reason = rules.customSizes ? customSizeProblem(size) : 'not supported';
    if (reason !== null) {
      const custom = rules.customSizes ? ' or a custom WIDTHxHEIGHT' : '';
      problems.push({
        field: field('size'),
        message: `'${size}' is invalid for ${model} (${reason}); allowed: ${rules.sizes.join(', ')}${custom}`,
      });
    }
  }

  if (parameters.quality !== undefined && !rules.qualities.includes(parameters.quality)) {
    problems.push({
      field: field('quality'),
      message: `'${parameters.quality}' is invalid for ${model}; allowed: ${rules.qualities.join(', ')}`,
    });
  }

  if (parameters.style !== undefined && !rules.styles.includes(parameters.style)) {
    problems.push({
      field: field('style'),
      message:
        rules.styles.length === 0
          ? `${model} does not take a style`
          : `'${parameters.style}' is invalid for ${model}; allowed: ${rules.styles.join(', ')}`,
    });
  }

  if (rules.family !== 'gpt-image') {
    for (const name of ['background', 'output_format', 'output_compression', 'moderation'] as const) {
      if (parameters[name] !== undefined) {
        problems.push({field: field(name), message: `only GPT image models take ${name}; ${model} does not`});
      }
    }
  } else {
    const format = parameters.output_format ?? 'png';
    if (parameters.output_compression !== undefined && format === 'png') {
      problems.push({
        field: field('output_compression'),
        message: 'only applies to output_format jpeg or webp',
      });
    }
    if (parameters.background === 'transparent' && format === 'jpeg') {
      problems.push({field: field('background'), message: 'transparent needs output_format png or webp'});
    }
  }

  if (problems.length > 0) throw validationError(problems);
  return {
    source: request.source,
    prompt: request.prompt,
    count: request.count ?? request.n ?? 1,
    model,
    parameters: {...parameters, size},
    metadata: request.metadata,
    allowPartial: request.allowPartial,
    ...(request.idempotencyKey !== undefined ? {idempotencyKey: request.idempotencyKey} : {}),
  };
}
