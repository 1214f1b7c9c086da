import type {IncomingMessage} from 'node:http';
import {z} from 'zod';
import {validationError, zodProblems, type FieldProblem} from '../core/errors';
import {
  EDIT_FIELD_SCHEMAS,
  EditUploadSchema,
  MAX_EDIT_IMAGES,
  type GenerateRequest,
  type ImageReference,
} from '../core/generation';
import type {ImageBytes} from '../core/image-bytes';
import {EDIT_LIMITS} from '../core/usecases/edit-inputs';
import {readMultipart, type FormText, type MultipartForm} from './multipart';

/**
 * An edit as multipart/form-data, the way OpenAI's own endpoint takes it (and
 * so the way OpenAI's SDK sends it): the images as `image` or `image[]` file
 * parts (1-16, in order), a `mask` or `markup` file, and every other field as
 * text. Text becomes what a JSON body would hold, as OpenAI reads it: integers
 * and booleans from their text, and `null` as "not given" for a field that is
 * not free text. An object (`metadata`, `svg`) is either one field of JSON
 * text or one field per key in brackets (`metadata[label]=x`), the way the SDK
 * encodes objects. The result is checked by the same schema and rules as a
 * JSON body, with each problem named as the field was sent.
 */

const FILE_FIELDS = new Set(['image', 'image[]', 'mask', 'markup']);

/** Text fields: a few dozen fields, metadata's 20 keys and svg's two at most. */
const MAX_TEXT_FIELDS = 64;
/** The longest prompt (32,000 characters) is at most 128,000 bytes of UTF-8. */
const MAX_TEXT_BYTES = 256 * 1024;

export const EditFormSchema = z
  .object({
    image: z
      .array(z.file())
      .min(1)
      .max(MAX_EDIT_IMAGES)
      .describe(
        `1-${MAX_EDIT_IMAGES} files (PNG, WebP or JPEG, judged by their bytes), each sent as \`image\` or \`image[]\`, in order.`,
      ),
    mask: z.file().optional().describe('A PNG with an alpha channel, the size of the first image.'),
    markup: z.file().optional().describe('A transparent PNG laid over the first image (never with mask).'),
    ...EDIT_FIELD_SCHEMAS,
  })
  .meta({
    id: 'EditUpload',
    description:
      'The images as files, every other field as text; objects (metadata, svg) as JSON text or one field per key, e.g. `metadata[label]`.',
  });

/** Reads a multipart edit body within `maxBytes`; throws VALIDATION_ERROR naming every problem. */
export async function readEditForm(req: IncomingMessage, maxBytes: number): Promise<GenerateRequest> {
  const form = await readMultipart(
    req,
    {
      maxBytes,
      maxFileBytes: Math.min(EDIT_LIMITS.imageBytes, maxBytes),
      // Every image, a mask and a markup; one more, so that too many images is said as such.
      maxFiles: MAX_EDIT_IMAGES + 3,
      maxTexts: MAX_TEXT_FIELDS,
      maxTextBytes: MAX_TEXT_BYTES,
    },
    field => FILE_FIELDS.has(field),
  );
  return parseEditForm(form);
}

/** The request a read form makes, checked as a JSON body is. */
export function parseEditForm(form: MultipartForm): GenerateRequest {
  const problems = [...form.problems];
  const body: Record<string, unknown> = {};
  const bracketed = new Set<string>();

  body.images = form.files.filter(file => file.field === 'image' || file.field === 'image[]').map(upload);
  for (const name of ['mask', 'markup'] as const) {
    const files = form.files.filter(file => file.field === name);
    if (files.length > 1) problems.push({field: name, message: 'send one file'});
    else if (files[0]) body[name] = upload(files[0]);
  }

  const seen = new Set<string>();
  for (const text of form.texts) {
    if (seen.has(text.field)) {
      problems.push({field: text.field, message: 'given more than once'});
      continue;
    }
    seen.add(text.field);
    const problem = placeText(body, text, bracketed);
    if (problem) problems.push(problem);
  }

  const parsed = EditUploadSchema.safeParse(body);
  if (!parsed.success) {
    problems.push(...zodProblems(parsed.error).map(p => ({...p, field: sentName(p.field, bracketed)})));
  }
  if (problems.length > 0 || !parsed.success) throw validationError(problems);
  return parsed.data;
}

function upload(file: {data: ImageBytes; filename: string}): ImageReference {
  return {kind: 'bytes', data: file.data, filename: file.filename};
}

type FieldKind = 'text' | 'integer' | 'boolean' | 'choice' | 'object';

/** What each text field holds, read from the edit schema, so a new parameter needs no change here. */
const FIELD_KINDS: Record<string, FieldKind> = Object.fromEntries(
  Object.entries(EDIT_FIELD_SCHEMAS).map(([name, schema]) => [name, kindOf(schema)]),
);

function kindOf(schema: z.ZodType): FieldKind {
  let inner: z.ZodType = schema;
  while (inner instanceof z.ZodOptional || inner instanceof z.ZodNullable)
    inner = inner.unwrap() as z.ZodType;
  if (inner instanceof z.ZodNumber) return 'integer';
  if (inner instanceof z.ZodBoolean) return 'boolean';
  if (inner instanceof z.ZodEnum) return 'choice';
  if (inner instanceof z.ZodObject || inner instanceof z.ZodRecord) return 'object';
  return 'text';
}

/** `metadata[label]` → ['metadata', 'label']; `svg[reasoning][effort]` → three; null for anything else. */
function splitName(name: string): string[] | null {
  const match = /^([A-Za-z_][\w.-]*)((?:\[[^[\]]+\])*)$/.exec(name);
  if (!match) return null;
  return [match[1]!, ...[...match[2]!.matchAll(/\[([^[\]]+)\]/g)].map(m => m[1]!)];
}

/** Puts one text field into `body` with the type its field has; the problem if it cannot. */
function placeText(
  body: Record<string, unknown>,
  text: FormText,
  bracketed: Set<string>,
): FieldProblem | null {
  const path = splitName(text.field);
  const base = path?.[0];
  if (!path || base === undefined) return {field: text.field, message: 'unknown field'};
  if (base === 'image' || base === 'images' || base === 'mask' || base === 'markup') {
    return {field: text.field, message: 'must be a file'};
  }
  const kind = FIELD_KINDS[base];
  if (path.length > 1) {
    if (kind !== 'object') return {field: text.field, message: 'unknown field'};
    if (body[base] !== undefined && !bracketed.has(base)) {
      return {field: text.field, message: `${base} is given as JSON text already`};
    }
    bracketed.add(base);
    let target = (body[base] ??= {}) as Record<string, unknown>;
    for (const key of path.slice(1, -1)) {
      const next = (target[key] ??= {});
      if (typeof next !== 'object') return {field: text.field, message: 'given as text and as an object'};
      target = next as Record<string, unknown>;
    }
    const last = path.at(-1)!;
    if (typeof target[last] === 'object')
      return {field: text.field, message: 'given as text and as an object'};
    target[last] = text.value;
    return null;
  }
  if (kind === 'object' && bracketed.has(base)) {
    return {field: text.field, message: `${base} is given as ${base}[key] fields already`};
  }
  // OpenAI reads `null` as "not given" for a field that is not free text.
  if (text.value === 'null' && kind !== undefined && kind !== 'text') return null;
  const value = typed(kind, text.value);
  if (value instanceof Error) return {field: text.field, message: value.message};
  body[base] = value;
  return null;
}

const NUMBER = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/;

/** The value a text stands for; text that does not parse stays text, for the schema to name. */
function typed(kind: FieldKind | undefined, value: string): unknown {
  switch (kind) {
    case 'integer':
      return NUMBER.test(value.trim()) ? Number(value) : value;
    case 'boolean':
      return value === 'true' ? true : value === 'false' ? false : value;
    case 'object':
      try {
        return JSON.parse(value) as unknown;
      } catch {
        return new Error('must be JSON text, or sent as one field per key (name[key])');
      }
    default:
      return value;
  }
}

/** A field as the schema names it (dotted) → as it was sent. */
function sentName(field: string, bracketed: Set<string>): string {
  const [base, ...rest] = field.split('.');
  if (base === 'images') return rest.length > 0 ? `image[${rest[0]}]` : 'image';
  if (base !== undefined && bracketed.has(base) && rest.length > 0) {
    return `${base}${rest.map(key => `[${key}]`).join('')}`;
  }
  return field;
}
