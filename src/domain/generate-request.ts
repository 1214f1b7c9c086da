import {z} from 'zod';
import {
  MAX_IMAGES_PER_REQUEST,
  MODEL_IDS,
  MODELS,
  OUTPUT_FORMATS,
  customSizeProblem,
  type ModelId,
  type OutputFormat,
} from './models';

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

const imageCount = z.number().int().min(1).max(MAX_IMAGES_PER_REQUEST);

/** Generation parameters shared by the rich payload and the legacy body. */
const generationParams = {
  count: imageCount.optional().describe('Number of images, 1-10 (alias `n`).'),
  n: imageCount.optional().describe('Alias of `count`.'),
  model: z.enum(MODEL_IDS).optional().describe('Image model; defaults to DEFAULT_MODEL.'),
  size: z.string().max(16).optional().describe('WIDTHxHEIGHT or `auto`, per model.'),
  quality: z.string().max(16).optional().describe('Per model: low|medium|high|auto, standard|hd.'),
  style: z.string().max(16).optional().describe('dall-e-3 only: vivid|natural.'),
  background: z.enum(['transparent', 'opaque', 'auto']).optional(),
  output_format: z.enum(OUTPUT_FORMATS).optional(),
  output_compression: z.number().int().min(0).max(100).optional(),
  moderation: z.enum(['low', 'auto']).optional(),
  user: z.string().min(1).max(256).optional().describe('End-user id passed to OpenAI.'),
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

export const GenerateRequestSchema = z
  .strictObject({prompt: promptText.describe('What to draw.'), ...generationParams})
  .meta({id: 'GenerateRequest', description: 'Rich generate payload.'});

export const LegacyRequestSchema = z
  .strictObject({
    input: z.strictObject({
      body: z.strictObject({prompt_image: promptText, ...generationParams}),
    }),
  })
  .meta({
    id: 'LegacyGenerateRequest',
    description: 'Legacy payload: {"input":{"body":{"prompt_image":"..."}}}.',
  });

export type GenerateRequest = z.infer<typeof GenerateRequestSchema>;

/** A validated, fully resolved generation the use case can run as is. */
export interface GenerateCommand {
  prompt: string;
  count: number;
  model: ModelId;
  size: string;
  quality?: string;
  style?: string;
  background?: 'transparent' | 'opaque' | 'auto';
  outputFormat?: OutputFormat;
  outputCompression?: number;
  moderation?: 'low' | 'auto';
  user?: string;
  metadata: Record<string, string>;
  allowPartial: boolean;
  idempotencyKey?: string;
  source: 'legacy' | 'generate';
}

export interface FieldProblem {
  field: string;
  message: string;
}

export type ParseResult = {ok: true; command: GenerateCommand} | {ok: false; problems: FieldProblem[]};

function listOf(values: readonly string[]): string {
  return values.join(', ');
}

function zodProblems(error: z.ZodError, prefix: string[] = []): FieldProblem[] {
  return error.issues.flatMap(issue => {
    const path = [...prefix, ...issue.path.map(String)];
    if (issue.code === 'unrecognized_keys') {
      return issue.keys.map(key => ({field: [...path, key].join('.'), message: 'unknown field'}));
    }
    let message = issue.message;
    if (issue.code === 'invalid_key') {
      message = issue.issues[0]?.message ?? message;
    } else if (issue.code === 'invalid_value' && 'values' in issue) {
      message = `must be one of: ${listOf(issue.values.map(String))}`;
    }
    return [{field: path.join('.') || '(body)', message}];
  });
}

/**
 * Parses either payload shape and checks it against the chosen model's rules.
 * Every problem is reported, not just the first.
 */
export function parseGenerateRequest(body: unknown, defaultModel: ModelId): ParseResult {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    return {ok: false, problems: [{field: '(body)', message: 'must be a JSON object'}]};
  }
  const isLegacy = Object.hasOwn(body, 'input');
  let raw: z.infer<typeof GenerateRequestSchema>;
  let source: GenerateCommand['source'];
  if (isLegacy) {
    const parsed = LegacyRequestSchema.safeParse(body);
    if (!parsed.success) return {ok: false, problems: zodProblems(parsed.error)};
    const {prompt_image, ...rest} = parsed.data.input.body;
    raw = {prompt: prompt_image, ...rest};
    source = 'legacy';
  } else {
    const parsed = GenerateRequestSchema.safeParse(body);
    if (!parsed.success) return {ok: false, problems: zodProblems(parsed.error)};
    raw = parsed.data;
    source = 'generate';
  }
  return checkModelRules(raw, defaultModel, source);
}

function checkModelRules(
  raw: GenerateRequest,
  defaultModel: ModelId,
  source: GenerateCommand['source'],
): ParseResult {
  const problems: FieldProblem[] = [];
  const model = raw.model ?? defaultModel;
  const rules = MODELS[model];
  const promptField = source === 'legacy' ? 'input.body.prompt_image' : 'prompt';
  const field = (name: string) => (source === 'legacy' ? `input.body.${name}` : name);

  if (raw.count !== undefined && raw.n !== undefined && raw.count !== raw.n) {
    problems.push({field: field('count'), message: '`count` and `n` disagree; send one of them'});
  }
  const count = raw.count ?? raw.n ?? 1;

  if (raw.prompt.length > rules.maxPromptChars) {
    problems.push({
      field: promptField,
      message: `is ${raw.prompt.length} characters; ${model} accepts at most ${rules.maxPromptChars}`,
    });
  }

  const size = raw.size ?? rules.defaultSize;
  if (!rules.sizes.includes(size)) {
    const reason = rules.customSizes ? customSizeProblem(size) : 'not supported';
    if (reason !== null) {
      const custom = rules.customSizes ? ' or a custom WIDTHxHEIGHT' : '';
      problems.push({
        field: field('size'),
        message: `'${size}' is invalid for ${model} (${reason}); allowed: ${listOf(rules.sizes)}${custom}`,
      });
    }
  }

  if (raw.quality !== undefined && !rules.qualities.includes(raw.quality)) {
    problems.push({
      field: field('quality'),
      message: `'${raw.quality}' is invalid for ${model}; allowed: ${listOf(rules.qualities)}`,
    });
  }

  if (raw.style !== undefined && !rules.styles.includes(raw.style)) {
    problems.push({
      field: field('style'),
      message:
        rules.styles.length === 0
          ? `${model} does not take a style`
          : `'${raw.style}' is invalid for ${model}; allowed: ${listOf(rules.styles)}`,
    });
  }

  if (rules.family !== 'gpt-image') {
    for (const name of ['background', 'output_format', 'output_compression', 'moderation'] as const) {
      if (raw[name] !== undefined) {
        problems.push({field: field(name), message: `only GPT image models take ${name}; ${model} does not`});
      }
    }
  } else {
    const format = raw.output_format ?? 'png';
    if (raw.output_compression !== undefined && format === 'png') {
      problems.push({
        field: field('output_compression'),
        message: 'only applies to output_format jpeg or webp',
      });
    }
    if (raw.background === 'transparent' && format === 'jpeg') {
      problems.push({
        field: field('background'),
        message: 'transparent needs output_format png or webp',
      });
    }
  }

  if (problems.length > 0) return {ok: false, problems};
  const command: GenerateCommand = {
    prompt: raw.prompt,
    count,
    model,
    size,
    metadata: raw.metadata ?? {},
    allowPartial: raw.allow_partial ?? false,
    source,
  };
  if (raw.idempotency_key !== undefined) command.idempotencyKey = raw.idempotency_key;
  if (raw.quality !== undefined) command.quality = raw.quality;
  if (raw.style !== undefined) command.style = raw.style;
  if (raw.background !== undefined) command.background = raw.background;
  if (raw.output_format !== undefined) command.outputFormat = raw.output_format;
  if (raw.output_compression !== undefined) command.outputCompression = raw.output_compression;
  if (raw.moderation !== undefined) command.moderation = raw.moderation;
  if (raw.user !== undefined) command.user = raw.user;
  return {ok: true, command};
}
