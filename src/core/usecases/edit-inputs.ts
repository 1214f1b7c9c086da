import type {Readable} from 'node:stream';
import {AppError, isAppError, storageCall, storageError, validationError, type FieldProblem} from '../errors';
import type {EditInputs, ImageReference} from '../generation';
import {imageBytesFromStream, imageBytesOf, wholeBytes, type ImageBytes} from '../image-bytes';
import type {ForeignObjects, ImageCodec, ImageInfo, InputImage, MetadataStore, ObjectStore} from '../ports';
import type {SourceImage} from '../records';
import type {Requester} from '../requester';
import {imageIdOfObjectPath} from '../ids';
import {findImage} from './images';

/** OpenAI's limits on edit inputs: each must be less than 50 MB (a mask, less than 4 MB). */
export const EDIT_LIMITS = {imageBytes: 50 * 1024 * 1024, maskBytes: 4 * 1024 * 1024};

const EDITABLE_TYPES = new Set(['image/png', 'image/jpeg', 'image/webp']);

export interface EditSourceDeps {
  objects: ObjectStore;
  metadata: MetadataStore;
  codec: ImageCodec;
  /** Reads other buckets' objects; absent where there is no Cloud Storage (local mode). */
  foreign?: ForeignObjects;
  /** The function's own bucket, read through `objects`; null in local mode. */
  ownBucket: string | null;
  /** Other buckets an edit may read from (EDIT_SOURCE_BUCKETS). */
  sourceBuckets: readonly string[];
}

/** An edit's inputs, read and checked: what goes upstream, and what the job records. */
export interface ResolvedInputs {
  upstream: {images: InputImage[]; mask?: InputImage; markup?: InputImage};
  sources: SourceImage[];
}

type Role = SourceImage['role'];

/**
 * Reads every input of an edit and checks it the way OpenAI will, before
 * anything is paid: each image a PNG, WebP or JPEG judged by its bytes (never
 * by its name or declared type) and at most 50 MB; a mask a PNG with an alpha
 * channel, the size of the first image, at most 4 MB; a markup a PNG with an
 * alpha channel, the size of the first image. References resolve only to what
 * the requester may use: its own images, and objects in the function's bucket
 * or one named in EDIT_SOURCE_BUCKETS. Nothing is fetched from the internet.
 * Every input is read once, into the one Blob that every upstream call sends.
 */
export async function resolveEditInputs(
  deps: EditSourceDeps,
  requester: Requester,
  edit: EditInputs,
): Promise<ResolvedInputs> {
  // Read at once; each input's problems are kept apart, so they are reported in the body's order.
  const read = async (ref: ImageReference, field: string, role: Role, maxBytes: number) => {
    const problems: FieldProblem[] = [];
    const data = await bytesOf(deps, requester, ref, field, maxBytes, problems);
    const info = data && (await inspect(deps.codec, data, role !== 'image'));
    if (data && (!info || !EDITABLE_TYPES.has(info.contentType))) {
      problems.push({field, message: 'must be a PNG, WebP or JPEG image (judged by its bytes)'});
    }
    const input: Read | null = data && info && problems.length === 0 ? {data, info, ref, role, field} : null;
    return {input, problems};
  };
  const imagesField = edit.imagesField ?? 'images';
  const reads = await Promise.all([
    ...edit.images.map((ref, i) => read(ref, `${imagesField}[${i}]`, 'image', EDIT_LIMITS.imageBytes)),
    edit.mask ? read(edit.mask, 'mask', 'mask', EDIT_LIMITS.maskBytes) : null,
    edit.markup ? read(edit.markup, 'markup', 'markup', EDIT_LIMITS.imageBytes) : null,
  ]);
  const problems = reads.flatMap(result => result?.problems ?? []);
  const images = reads.slice(0, edit.images.length).map(result => result!.input);
  const [mask, markup] = reads.slice(edit.images.length).map(result => result?.input ?? null);
  const first = images[0]?.info;
  for (const overlay of [mask, markup]) {
    if (!overlay) continue;
    if (overlay.info.contentType !== 'image/png' || !overlay.info.alpha) {
      problems.push({field: overlay.field, message: 'must be a PNG with an alpha channel'});
    } else if (first && (overlay.info.width !== first.width || overlay.info.height !== first.height)) {
      problems.push({
        field: overlay.field,
        message: `is ${overlay.info.width}x${overlay.info.height}; it must be the size of the first image, ${first.width}x${first.height}`,
      });
    } else if (
      overlay.role === 'markup' &&
      !(await deps.codec.hasTransparentPixels(await wholeBytes(overlay.data)))
    ) {
      // OpenAI lays the markup over the image: one with no transparent pixel would hide it all.
      problems.push({
        field: overlay.field,
        message: 'must have transparent pixels (it is laid over the image)',
      });
    }
  }
  if (problems.length > 0) {
    const missing = problems.find(p => p.message === NOT_FOUND);
    if (missing)
      throw new AppError('IMAGE_NOT_FOUND', `${missing.field}: no such image`, {details: {fields: problems}});
    throw validationError(problems);
  }
  const all = [...images, mask, markup].filter((input): input is Read => Boolean(input));
  return {
    upstream: {
      images: images.map(input => upstreamFile(input!)),
      ...(mask ? {mask: upstreamFile(mask)} : {}),
      ...(markup ? {markup: upstreamFile(markup)} : {}),
    },
    sources: all.map(input => ({
      role: input.role,
      image_id: input.ref.kind === 'image_id' ? input.ref.id : null,
      gcs_uri: input.ref.kind === 'gcs_uri' ? `gs://${input.ref.bucket}/${input.ref.path}` : null,
      sha256: input.info.sha256,
    })),
  };
}

interface Read {
  data: ImageBytes;
  info: ImageInfo;
  ref: ImageReference;
  role: Role;
  field: string;
}

const NOT_FOUND = 'no such image';

/**
 * What an image's header says, read from its first bytes; all of it is read
 * only when they do not tell (a header after large metadata, or, for a mask
 * or markup, transparency declared past them).
 */
async function inspect(codec: ImageCodec, bytes: ImageBytes, needsAlpha: boolean): Promise<ImageInfo | null> {
  const fromHead = codec.inspect(bytes.head, bytes.sha256);
  if (bytes.head.length === bytes.size) return fromHead;
  if (fromHead && (fromHead.alpha || !needsAlpha)) return {...fromHead, bytes: bytes.size};
  return codec.inspect(await wholeBytes(bytes), bytes.sha256);
}

function upstreamFile(input: Read): InputImage {
  return {
    data: input.data.blob,
    filename: `${input.field.replace(/\W+/g, '-').replace(/-$/, '')}.${input.info.extension}`,
    contentType: input.info.contentType,
  };
}

/** The bytes a reference names, or null with the problem noted. */
async function bytesOf(
  deps: EditSourceDeps,
  requester: Requester,
  ref: ImageReference,
  field: string,
  limit: number,
  problems: FieldProblem[],
): Promise<ImageBytes | null> {
  // OpenAI's limits are "less than": the most it takes is a byte under.
  const maxBytes = limit - 1;
  const tooLarge = (bytes: number) => {
    problems.push({field, message: `is ${bytes} bytes; it must be under ${limit}`});
    return null;
  };
  const overLimit = () => {
    problems.push({field, message: `is not under the limit of ${limit} bytes`});
    return null;
  };
  if (ref.kind === 'bytes') return ref.data.size > maxBytes ? tooLarge(ref.data.size) : ref.data;
  const stored = async (id: string, path?: string) => {
    const found = await findImage(deps, requester, id).catch((error: unknown) => {
      if (error instanceof AppError && error.code === 'IMAGE_NOT_FOUND') return null;
      throw error;
    });
    if (!found || (path !== undefined && found.image.object_path !== path)) return missing(field, problems);
    if (found.image.bytes > maxBytes) return tooLarge(found.image.bytes);
    const stream = await storageCall(
      'Could not read an image to edit',
      deps.objects.read(found.image.object_path),
    );
    return stream ? readAll(stream, maxBytes, overLimit) : missing(field, problems);
  };
  if (ref.kind === 'image_id') return stored(ref.id);
  if (ref.bucket === deps.ownBucket && ref.path.startsWith('images/')) {
    // The function's own images belong to the callers that made them: a gs:// URI of one is
    // read through its record, as its image_id would be, so another caller's is not found.
    const id = imageIdOfObjectPath(ref.path);
    return id ? stored(id, ref.path) : missing(field, problems);
  }
  if (ref.bucket === deps.ownBucket) {
    const stream = await storageCall('Could not read an image to edit', deps.objects.read(ref.path));
    return stream ? readAll(stream, maxBytes, overLimit) : missing(field, problems);
  }
  if (!deps.foreign || !deps.sourceBuckets.includes(ref.bucket)) {
    problems.push({
      field,
      message: deps.foreign
        ? `bucket '${ref.bucket}' is not one this function may read (its own, or EDIT_SOURCE_BUCKETS)`
        : 'gs:// sources need Cloud Storage mode (GCS_BUCKET)',
    });
    return null;
  }
  let data: Buffer | null;
  try {
    data = await deps.foreign.read(ref.bucket, ref.path, maxBytes);
  } catch (error) {
    // The reader refuses an object past the limit before downloading it.
    if (isAppError(error) && error.code === 'VALIDATION_ERROR') return overLimit();
    throw storageError('Could not read an image to edit', error);
  }
  // The object's one buffer goes once its bytes are in the Blob.
  return data ? imageBytesOf(data) : missing(field, problems);
}

function missing(field: string, problems: FieldProblem[]): null {
  problems.push({field, message: NOT_FOUND});
  return null;
}

/** The stream's bytes; null (the problem noted by `overLimit`) once they pass `maxBytes`. */
async function readAll(
  stream: Readable,
  maxBytes: number,
  overLimit: () => null,
): Promise<ImageBytes | null> {
  let bytes: ImageBytes | null;
  try {
    bytes = await imageBytesFromStream(stream, maxBytes);
  } catch (error) {
    throw storageError('Could not read an image to edit', error);
  }
  return bytes ?? overLimit();
}
