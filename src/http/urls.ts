import type {IncomingMessage} from 'node:http';

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
