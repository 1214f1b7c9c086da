import type {ServerResponse} from 'node:http';
import type {Config} from '../config';
import {AppError, isAppError} from '../core/errors';
import {readJsonBody, type ParsedRequest} from './body';
import type {BodySpec} from './route';
import {mediaTypeOf} from './streamed-bodies';

/**
 * Reads a route's body as its spec says, within the route's limit: a media
 * type the route streams goes to its reader; anything else is read as JSON.
 */
export async function readRouteBody<B>(
  spec: BodySpec<B>,
  req: ParsedRequest,
  res: ServerResponse,
  config: Config,
): Promise<B> {
  const maxBytes = spec.maxBytes?.(config) ?? config.maxBodyBytes;
  const streamed = spec.streamed ?? {};
  const reader = streamed[mediaTypeOf(req)];
  if (reader) {
    try {
      return await reader.read(req, maxBytes);
    } catch (error) {
      // The rest of the body is left unread: the connection cannot carry another request.
      if (!req.complete) res.setHeader('Connection', 'close');
      throw error;
    }
  }
  let json: unknown;
  try {
    json = await readJsonBody(req, maxBytes);
  } catch (error) {
    if (isAppError(error) && error.code === 'UNSUPPORTED_MEDIA_TYPE') {
      const others = Object.keys(streamed);
      if (others.length > 0) throw new AppError(error.code, `${error.message} or ${others.join(', ')}`);
    }
    throw error;
  }
  const body = spec.parse(json);
  // What the handler gets is parsed from these; a body of images should not be held twice more.
  req.body = undefined;
  req.rawBody = undefined;
  return body;
}
