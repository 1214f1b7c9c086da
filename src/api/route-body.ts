import type {IncomingMessage, ServerResponse} from 'node:http';
import type {Config} from '../config';
import {admitBody, discardUnreadBody, readJsonObject, readJsonWithBase64} from './body';
import type {BodySpec} from './route';

/**
 * Reads a route's body as its spec says, within the route's limit. Nothing is
 * read before the media type, coding and declared length are checked
 * (`admitBody`); then a media type the route streams goes to its reader, and
 * JSON is read, inflated if gzip, and parsed, each only up to the limit (its
 * large base64 values decoded on the way, where the spec says where they are).
 */
export async function readRouteBody<B>(
  spec: BodySpec<B>,
  req: IncomingMessage,
  res: ServerResponse,
  config: Config,
): Promise<B> {
  const maxBytes = spec.maxBytes?.(config) ?? config.maxBodyBytes;
  const streamed = spec.streamed ?? {};
  const admitted = admitBody(req, res, maxBytes, Object.keys(streamed));
  if (admitted.json && spec.base64At) {
    const {body, decoded} = await readJsonWithBase64(req, admitted, maxBytes, spec.base64At);
    return spec.parse(body, decoded);
  }
  if (admitted.json) return spec.parse(await readJsonObject(req, admitted, maxBytes));
  try {
    return await streamed[admitted.mediaType]!.read(req, maxBytes);
  } catch (error) {
    // What the reader left on the wire is read and thrown away, so the answer reaches the caller.
    discardUnreadBody(req);
    throw error;
  }
}
