import {pipeline} from 'node:stream/promises';
import {z} from 'zod';
import {deleteImage, findImage, findImageToServe, openImage} from '../../core/usecases/images';
import {sendJson} from '../responses';
import {defineRoute} from '../route';
import {DeletedSchema, IMAGE_CONTENT_TYPES, ImageUrlSchema} from '../views';

const ImageParamsSchema = z.object({id: z.string().describe('Image id (a UUID).')});

/**
 * What a proxy image link adds (see api/urls.ts): its job, and with API keys
 * its own credential; without `expires` and `signature` the caller's key is needed.
 */
const ImageLinkQuerySchema = z.object({
  job: z
    .uuid()
    .optional()
    .describe(
      "The image's job. Image links name it, so an image of a job still running (linked by a stream's `image.completed`) is found.",
    ),
  expires: z
    .string()
    .regex(/^\d{1,12}$/)
    .optional()
    .describe('Unix seconds after which the URL stops working.'),
  signature: z
    .string()
    .regex(/^[0-9a-f]{64}$/)
    .optional()
    .describe('HMAC of the image id, `job` and `expires`.'),
});

const IMAGE_CACHE_CONTROL = 'public, max-age=31536000, immutable';

/**
 * An SVG is a document that can carry script. Served from the function's own
 * origin it must never run: no sources at all, inline styles only, and a
 * sandbox that also denies scripts and same-origin access if opened directly.
 */
const IMAGE_CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; sandbox";

function matchesEtag(header: string | undefined, etag: string): boolean {
  if (!header) return false;
  return header.split(',').some(tag => {
    const value = tag.trim().replace(/^W\//, '');
    return value === etag || value === '*';
  });
}

/** The image bytes (GET) or only their headers (HEAD); ETag is the quoted sha256. */
function serveImageRoute(method: 'GET' | 'HEAD') {
  return defineRoute({
    method,
    path: '/images/{id}',
    operationId: method === 'GET' ? 'getImage' : 'headImage',
    summary: method === 'GET' ? 'The image bytes' : 'The image headers',
    params: ImageParamsSchema,
    // A signed proxy URL is its own credential, so a browser's <img> needs no header.
    signedUrls: true,
    query: ImageLinkQuerySchema,
    headers: z.object({'If-None-Match': z.string().optional()}),
    responses: {
      200: {
        description: method === 'GET' ? 'The image; ETag is the quoted sha256' : 'Headers only',
        ...(method === 'GET' ? {mediaTypes: [...IMAGE_CONTENT_TYPES]} : {}),
      },
      304: {description: 'Not modified'},
    },
    errors: method === 'GET' ? ['IMAGE_NOT_FOUND', 'STORAGE_ERROR'] : ['IMAGE_NOT_FOUND'],
    async handle(ctx) {
      const image = await findImageToServe(ctx.services, ctx.requester, ctx.params.id, ctx.query.job);
      ctx.labels.image_ids = image.id;
      const etag = `"${image.sha256}"`;
      const headers = {
        'Content-Type': image.content_type,
        ETag: etag,
        'Cache-Control': IMAGE_CACHE_CONTROL,
        'X-Content-Type-Options': 'nosniff',
        'Content-Security-Policy': IMAGE_CONTENT_SECURITY_POLICY,
      };
      const res = ctx.res;
      if (matchesEtag(ctx.headers['If-None-Match'], etag)) {
        res.writeHead(304, headers).end();
        return;
      }
      if (method === 'HEAD') {
        res.writeHead(200, {...headers, 'Content-Length': String(image.bytes)}).end();
        return;
      }
      const stream = await openImage(ctx.services, image);
      res.writeHead(200, {...headers, 'Content-Length': String(image.bytes)});
      await pipeline(stream, res);
    },
  });
}

export const imageRoutes = [
  serveImageRoute('GET'),
  serveImageRoute('HEAD'),
  defineRoute({
    method: 'DELETE',
    path: '/images/{id}',
    operationId: 'deleteImage',
    summary: 'Delete an image (object and record)',
    params: ImageParamsSchema,
    responses: {200: {description: 'Deleted', schema: DeletedSchema}},
    errors: ['IMAGE_NOT_FOUND', 'STORAGE_ERROR'],
    async handle(ctx) {
      const image = await deleteImage(ctx.services, ctx.requester, ctx.params.id);
      ctx.labels.job_id = image.job_id;
      ctx.labels.image_ids = image.id;
      sendJson(ctx.res, 200, {status: 'deleted', job_id: image.job_id, image_ids: [image.id]});
    },
  }),
  defineRoute({
    method: 'GET',
    path: '/images/{id}/url',
    operationId: 'getImageUrl',
    summary: 'A fresh URL for the image (renews expired signed URLs)',
    params: ImageParamsSchema,
    responses: {200: {description: 'The URL', schema: ImageUrlSchema}},
    errors: ['IMAGE_NOT_FOUND', 'STORAGE_ERROR'],
    async handle(ctx) {
      const {image} = await findImage(ctx.services, ctx.requester, ctx.params.id);
      ctx.labels.image_ids = image.id;
      sendJson(ctx.res, 200, {id: image.id, ...(await ctx.links(image))});
    },
  }),
];
