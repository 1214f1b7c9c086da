import {createHmac, timingSafeEqual} from 'node:crypto';
import type {IncomingMessage} from 'node:http';
import type {Config} from '../config';
import {AppError, storageError} from '../core/errors';
import type {ObjectStore} from '../core/ports';
import type {ImageRecord} from '../core/records';

/** The values of a header that may be repeated or a comma-separated list, in order. */
function headerValues(value: string | string[] | undefined): string[] {
  return (Array.isArray(value) ? value.join(',') : (value ?? ''))
    .split(',')
    .map(item => item.trim())
    .filter(Boolean);
}

const HOST = /^(?:[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::\d{1,5})?$/;
const LOOPBACK = /^(?:localhost|127(?:\.\d{1,3}){3}|\[::1\])(?::\d{1,5})?$/;

/**
 * The scheme and host the request came in at: the connection's and its Host
 * header, or, with TRUST_PROXY, the nearest proxy's X-Forwarded-Proto and
 * X-Forwarded-Host (the last value of each: the one that proxy added).
 */
function requestOrigin(
  req: IncomingMessage,
  trustProxy: boolean,
): {proto: 'http' | 'https'; host: string | null} {
  const forwardedProto = trustProxy ? headerValues(req.headers['x-forwarded-proto']).at(-1) : undefined;
  const forwardedHost = trustProxy ? headerValues(req.headers['x-forwarded-host']).at(-1) : undefined;
  const encrypted = (req.socket as {encrypted?: boolean}).encrypted === true;
  const proto =
    (forwardedProto?.toLowerCase() ?? (encrypted ? 'https' : 'http')) === 'https' ? 'https' : 'http';
  const host = (forwardedHost ?? req.headers.host ?? '').toLowerCase();
  return {proto, host: HOST.test(host) ? host : null};
}

/** Where a Cloud Run service is: read once per instance from the metadata server. */
interface CloudRunPlace {
  projectId: string;
  projectNumber: string;
  region: string;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

const places = new Map<string, Promise<CloudRunPlace>>();

async function metadata(host: string, path: string): Promise<string> {
  const response = await fetch(`http://${host}/computeMetadata/v1/${path}`, {
    headers: {'Metadata-Flavor': 'Google'},
    signal: AbortSignal.timeout(3000),
  });
  if (!response.ok) throw new Error(`metadata server answered ${response.status} for ${path}`);
  return (await response.text()).trim();
}

/** The project and region of this instance; a failure is not remembered, so the next request asks again. */
function cloudRunPlace(cloudRun: NonNullable<Config['cloudRun']>): Promise<CloudRunPlace> {
  let place = places.get(cloudRun.metadataHost);
  if (!place) {
    place = (async () => {
      const [regionPath, projectId] = await Promise.all([
        metadata(cloudRun.metadataHost, 'instance/region'),
        cloudRun.projectId ?? metadata(cloudRun.metadataHost, 'project/project-id'),
      ]);
      const match = /^projects\/(\d+)\/regions\/([a-z0-9-]+)$/.exec(regionPath);
      if (!match) throw new Error(`unexpected region from the metadata server: ${regionPath.slice(0, 100)}`);
      return {projectId, projectNumber: match[1]!, region: match[2]!};
    })();
    places.set(cloudRun.metadataHost, place);
    place.catch(() => places.delete(cloudRun.metadataHost));
  }
  return place;
}

export interface BaseUrlOptions {
  publicBaseUrl: string | undefined;
  functionTarget: string | undefined;
  trustProxy: boolean;
  cloudRun: Config['cloudRun'];
}

/**
 * The base URL of this function's own image links. The caller's Host (or
 * X-Forwarded-Host) is used only when it is one of the function's own hosts,
 * so a caller can never make the function hand out links to another site.
 *
 * 1. PUBLIC_BASE_URL, when set.
 * 2. On Cloud Run (K_SERVICE set), with the project and region read once
 *    from the metadata server: the host the request came in at if it is the
 *    function's `REGION-PROJECT_ID.cloudfunctions.net` (then with
 *    `/FUNCTION_TARGET`); otherwise the service's own
 *    `https://K_SERVICE-PROJECT_NUMBER.REGION.run.app`, which every service
 *    has. Should the metadata server not answer, only a cloudfunctions.net
 *    host of GOOGLE_CLOUD_PROJECT is taken; anything else is a SERVICE_ERROR
 *    asking for PUBLIC_BASE_URL.
 * 3. Elsewhere (local development): the request's host if it is a loopback
 *    name or address, else `localhost` on the port the request came in on.
 */
export async function baseUrlFor(req: IncomingMessage, options: BaseUrlOptions): Promise<string> {
  if (options.publicBaseUrl) return options.publicBaseUrl;
  const {proto, host} = requestOrigin(req, options.trustProxy);
  const {cloudRun, functionTarget} = options;
  if (cloudRun) {
    /** The function's cloudfunctions.net host: in `region`, or any region when it is unknown. */
    const isFunctionsHost = (projectId: string, region: string | null) =>
      host !== null &&
      new RegExp(`^${region ?? '[a-z]+-[a-z]+\\d+'}-${escapeRegExp(projectId)}\\.cloudfunctions\\.net$`).test(
        host,
      );
    const viaFunctionsHost = `https://${host}${functionTarget ? `/${functionTarget}` : ''}`;
    let place: CloudRunPlace;
    try {
      place = await cloudRunPlace(cloudRun);
    } catch (error) {
      if (cloudRun.projectId && isFunctionsHost(cloudRun.projectId, null)) return viaFunctionsHost;
      throw new AppError(
        'SERVICE_ERROR',
        "Could not tell this function's public URL from the metadata server; set PUBLIC_BASE_URL",
        {cause: error},
      );
    }
    if (isFunctionsHost(place.projectId, place.region)) return viaFunctionsHost;
    return `https://${cloudRun.service}-${place.projectNumber}.${place.region}.run.app`;
  }
  if (host !== null && LOOPBACK.test(host)) return `${proto}://${host}`;
  return `${proto}://localhost:${req.socket.localPort ?? 8080}`;
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
  let base: Promise<string> | undefined;
  const baseUrl = () =>
    (base ??= baseUrlFor(req, {
      publicBaseUrl: mode === 'proxy' ? config.publicBaseUrl : undefined,
      functionTarget: config.functionTarget,
      trustProxy: config.trustProxy,
      cloudRun: config.cloudRun,
    }));
  const key = config.urls.proxySigningKey;
  // A proxy link names the image's job: a stream links an image as soon as
  // it is stored, before its job is completed and its record written, and
  // GET /images/:id finds it then through its running job.
  if (!key) {
    return async image => ({
      url: `${await baseUrl()}/images/${image.id}?job=${image.job_id}`,
      url_expires_at: null,
      gcs_uri: gcsUri(image),
    });
  }
  // With API keys, a proxy URL carries its own short-lived credential (like a
  // GCS signed URL), so it works in an <img> that cannot send a header.
  return async image => {
    const base = await baseUrl();
    const expires = Math.floor(Date.now() / 1000) + signedTtlSeconds;
    const signature = proxySignature(key, image.id, image.job_id, expires);
    return {
      url: `${base}/images/${image.id}?job=${image.job_id}&expires=${expires}&signature=${signature}`,
      url_expires_at: new Date(expires * 1000).toISOString(),
      gcs_uri: gcsUri(image),
    };
  };
}

/**
 * HMAC of the image id, its job and the expiry. URLs signed before links
 * named their job sign only the id and the expiry (`jobId` null); they stay
 * valid until they expire. The two messages differ in their number of lines.
 */
function proxySignature(key: Buffer, imageId: string, jobId: string | null, expires: number): string {
  const message = jobId === null ? `${imageId}\n${expires}` : `${imageId}\n${jobId}\n${expires}`;
  return createHmac('sha256', key).update(message).digest('hex');
}

/** Whether a proxy URL's signature is ours for this image (and job, if it names one) and has not expired. */
export function verifyProxySignature(
  key: Buffer,
  imageId: string,
  jobId: string | null,
  expires: string,
  signature: string,
  now: Date,
): 'valid' | 'expired' | 'invalid' {
  const expected = Buffer.from(proxySignature(key, imageId, jobId, Number(expires)), 'hex');
  const given = Buffer.from(signature, 'hex');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return 'invalid';
  return Number(expires) * 1000 > now.getTime() ? 'valid' : 'expired';
}
