import {createHash, timingSafeEqual} from 'node:crypto';
import type {IncomingMessage} from 'node:http';
import type {ApiKey} from '../config';
import {AppError} from '../core/errors';
import type {Requester} from '../core/requester';

function digest(value: string): Buffer {
  return createHash('sha256').update(value).digest();
}

function presentedKeys(req: IncomingMessage): string[] {
  const presented: string[] = [];
  const header = req.headers['x-api-key'];
  if (typeof header === 'string' && header !== '') presented.push(header.trim());
  const authorization = req.headers.authorization;
  const bearer = typeof authorization === 'string' ? /^Bearer\s+(\S+)$/i.exec(authorization) : null;
  if (bearer) presented.push(bearer[1]!);
  return presented;
}

/**
 * Checks the caller's key against every configured key. Comparing sha256
 * digests with timingSafeEqual, and never stopping at the first match, keeps
 * the time independent of how much of a key was right. Behind IAM the
 * Authorization header carries Google's ID token, so X-API-Key is checked too.
 */
export function authenticate(req: IncomingMessage, keys: readonly ApiKey[]): Requester {
  if (keys.length === 0) return {kind: 'iam', email: verifiedEmail(req)};
  const presented = presentedKeys(req).map(digest);
  let found: ApiKey | undefined;
  for (const key of keys) {
    const expected = digest(key.key);
    for (const candidate of presented) {
      if (timingSafeEqual(candidate, expected) && !found) found = key;
    }
  }
  if (!found) {
    throw new AppError(
      'UNAUTHENTICATED',
      presented.length === 0
        ? 'An API key is required: send X-API-Key or Authorization: Bearer'
        : 'The API key is not valid',
    );
  }
  return {kind: 'api-key', name: found.name, admin: found.admin, dailyQuota: found.dailyQuota};
}

/**
 * The caller's email from the Google ID token Cloud Run verified before the
 * request reached the function (Cloud Run passes the Authorization header
 * on). Only a label of who made a job: the signature is Cloud Run's to check,
 * and without keys nothing is enforced by it.
 */
function verifiedEmail(req: IncomingMessage): string | null {
  const authorization = req.headers.authorization;
  const token =
    typeof authorization === 'string' ? /^Bearer\s+([\w-]+)\.([\w-]+)\.([\w-]+)$/i.exec(authorization) : null;
  if (!token) return null;
  try {
    const claims = JSON.parse(Buffer.from(token[2]!, 'base64url').toString('utf8')) as {
      email?: unknown;
      email_verified?: unknown;
    };
    return typeof claims.email === 'string' && claims.email_verified !== false && claims.email.length <= 320
      ? claims.email
      : null;
  } catch {
    return null;
  }
}
