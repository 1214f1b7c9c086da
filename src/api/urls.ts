import {createHmac, timingSafeEqual} from 'node:crypto';
import type {IncomingMessage} from 'node:http';
import type {Config} from '../config';
import {storageError} from '../core/errors';
import type {ObjectStore} from '../core/ports';
import type {ImageRecord} from '../core/records';

function first(value: string | string[] | undefined): string | undefined {
  const text = Array.isArray(value) ? value[0] : value;
  return text?.split(',')[0]?.trim() || undefined;
}

/**
 * The base URL callers reach this function at. PUBLIC_BASE_URL wins; otherwise
 * it comes from the forwarded proto and the host the caller used. On the
 * cloudfunctions.net domain the function's name is part of the path.
 */
export function baseUrlFor(
  req: IncomingMessage,
  options: {publicBaseUrl: string | undefined; functionTarget: string | undefined},
): string {
  if (options.publicBaseUrl) return options.publicBaseUrl;
  const proto = first(req.headers['x-forwarded-proto']) ?? 'http';
  const host = first(req.headers['x-forwarded-host']) ?? first(req.headers.host) ?? 'localhost';
  const safeProto = proto === 'https' ? 'https' : 'http';
  const safeHost = /^[A-Za-z0-9.-]+(:\d+)?$|^\[[0-9a-fA-F:.]+\](:\d+)?$/.test(host) ? host : 'localhost';
  const prefix =
    safeHost.endsWith('.cloudfunctions.net') && options.functionTarget ? `/${options.functionTarget}` : '';
  return `${safeProto}://${safeHost}${prefix}`;
}

export interface ImageLinks {
  url: string;
  url_expires_at: string | null;
  gcs_uri: string | null;
}

export type ImageLinker = (image: ImageRecord) => Promise<ImageLinks>;

/** Makes the URLs for an image the way URL_MODE asks; signed URLs are minted fresh each time. */
export function imageLinker(config: Config, store: ObjectStore, req: IncomingMessage): ImageLinker {
  const gcsUri = (image: ImageRecord) => store.uri?.(image.object_path) ?? null;
  const {mode, signedTtlSeconds} = config.urls;
  if (mode === 'signed' && store.signedReadUrl) {
    const sign = store.signedReadUrl.bind(store);
    return async image => {
      try {
        const signed = await sign(image.object_path, signedTtlSeconds);
        return {url: signed.url, url_expires_at: signed.expiresAt.toISOString(), gcs_uri: gcsUri(image)};
      } catch (error) {
        throw storageError(
          'Could not sign the image URL; check that the service account may sign blobs',
          error,
        );
      }
    };
  }
  if (mode === 'public' && store.publicUrl) {
    const publicUrl = store.publicUrl.bind(store);
    return async image => ({url: publicUrl(image.object_path), url_expires_at: null, gcs_uri: gcsUri(image)});
  }
  const base = baseUrlFor(req, {
    publicBaseUrl: mode === 'proxy' ? config.publicBaseUrl : undefined,
    functionTarget: config.functionTarget,
  });
  const key = config.urls.proxySigningKey;
  if (!key) {
    return async image => ({url: `${base}/images/${image.id}`, url_expires_at: null, gcs_uri: gcsUri(image)});
  }
  // With API keys, a proxy URL carries its own short-lived credential (like a
  // GCS signed URL), so it works in an <img> that cannot send a header.
  return async image => {
    const expires = Math.floor(Date.now() / 1000) + signedTtlSeconds;
    const signature = proxySignature(key, image.id, expires);
    return {
      url: `${base}/images/${image.id}?expires=${expires}&signature=${signature}`,
      url_expires_at: new Date(expires * 1000).toISOString(),
      gcs_uri: gcsUri(image),
    };
  };
}

function proxySignature(key: Buffer, imageId: string, expires: number): string {
  return createHmac('sha256', key).update(`${imageId}\n${expires}`).digest('hex');
}

/** Whether a proxy URL's signature is ours for this image and has not expired. */
export function verifyProxySignature(
  key: Buffer,
  imageId: string,
  expires: string,
  signature: string,
  now: Date,
): 'valid' | 'expired' | 'invalid' {
  const expected = Buffer.from(proxySignature(key, imageId, Number(expires)), 'hex');
  const given = Buffer.from(signature, 'hex');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return 'invalid';
  return Number(expires) * 1000 > now.getTime() ? 'valid' : 'expired';
}
