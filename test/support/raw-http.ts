import {connect, type Socket} from 'node:net';

export interface RawResponse {
  status: number;
  /** Header names in lower case. */
  headers: Record<string, string>;
  body: string;
  /** Interim (1xx) statuses received before the response, e.g. 100 Continue. */
  interim: number[];
  /** Body bytes the client had written when the response was whole. */
  bodyBytesSent: number;
}

export interface RawRequest {
  /** The request line and headers exactly as sent, without the blank line that ends them. */
  head: string;
  /** Body bytes sent at once after the head. */
  body?: Buffer | string;
  /**
   * More body, written while there is no answer yet (with backpressure): a
   * response can arrive while the body is still being sent.
   */
  stream?: Iterable<Buffer>;
  /** Read nothing until the whole request is written, as a client that only sends and then reads. */
  readAfterSending?: boolean;
}

function parseHead(text: string): {status: number; headers: Record<string, string>} {
  const [statusLine = '', ...lines] = text.split('\r\n');
  const match = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine);
  if (!match) throw new Error(`not an HTTP response: ${JSON.stringify(statusLine.slice(0, 100))}`);
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  return {status: Number(match[1]), headers};
}

/**
 * Sends a request byte for byte over a fresh TCP connection (no client library
 * in between to fix up paths, headers or bodies) and reads the one response.
 * The response must carry Content-Length, as every answer of the function does.
 * The connection is never half-closed (no client does that after a request),
 * so a body sent only in part stays unfinished.
 */
export function rawRequest(baseUrl: string, request: RawRequest): Promise<RawResponse> {
  const {hostname, port} = new URL(baseUrl);
  return new Promise((resolve, reject) => {
    const socket: Socket = connect(Number(port), hostname);
    let received = Buffer.alloc(0);
    const interim: number[] = [];
    let bodyBytesSent = 0;
    let done = false;
    const finish = (error: Error | null, response?: RawResponse) => {
      if (done) return;
      done = true;
      socket.destroy();
      if (error) reject(error);
      else resolve(response!);
    };
    const tryParse = () => {
      for (;;) {
        const end = received.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = parseHead(received.subarray(0, end).toString('latin1'));
        if (head.status >= 100 && head.status < 200) {
          interim.push(head.status);
          received = received.subarray(end + 4);
          continue;
        }
        // A response to HEAD has headers only.
        const length = request.head.startsWith('HEAD ') ? 0 : Number(head.headers['content-length']);
        if (!Number.isFinite(length)) {
          finish(new Error(`response without Content-Length: ${received.toString('latin1').slice(0, 300)}`));
          return;
        }
        if (received.length < end + 4 + length) return;
        const body = received.subarray(end + 4, end + 4 + length).toString('utf8');
        finish(null, {...head, body, interim, bodyBytesSent});
        return;
      }
    };
    socket.on('data', chunk => {
      received = Buffer.concat([received, chunk]);
      try {
        tryParse();
      } catch (error) {
        finish(error as Error);
      }
    });
    socket.on('error', error => {
      tryParse();
      finish(new Error(`connection failed (${(error as {code?: string}).code ?? error.message})`));
    });
    socket.on('close', () => {
      tryParse();
      finish(
        new Error(`connection closed without a whole response: ${received.toString('latin1').slice(0, 300)}`),
      );
    });
    socket.on('connect', () => {
      if (request.readAfterSending) socket.pause();
      socket.write(`${request.head}\r\n\r\n`);
      if (request.body !== undefined) {
        const bytes = Buffer.from(request.body);
        bodyBytesSent += bytes.length;
        socket.write(bytes);
      }
      const chunks = request.stream?.[Symbol.iterator]();
      const pump = () => {
        while (!done && chunks) {
          const next = chunks.next();
          if (next.done) break;
          bodyBytesSent += next.value.length;
          if (!socket.write(next.value)) {
            socket.once('drain', pump);
            return;
          }
        }
        if (request.readAfterSending) socket.write('', () => socket.resume());
      };
      pump();
    });
  });
}

/** The response body as our JSON error, or an error saying what it was instead. */
export function errorOf(response: RawResponse): {status: number; code: string; error: string} {
  let parsed: {code?: unknown; error?: unknown; status?: unknown};
  try {
    parsed = JSON.parse(response.body) as typeof parsed;
  } catch {
    throw new Error(`not JSON (${response.status}): ${response.body.slice(0, 300)}`);
  }
  if (parsed.status !== 'failed' || typeof parsed.code !== 'string' || typeof parsed.error !== 'string') {
    throw new Error(`not our error shape (${response.status}): ${response.body.slice(0, 300)}`);
  }
  return {status: response.status, code: parsed.code, error: parsed.error};
}

/** `count` chunks of `size` bytes each. */
export function* chunksOf(size: number, count: number, fill = 0x20): Iterable<Buffer> {
  const chunk = Buffer.alloc(size, fill);
  for (let i = 0; i < count; i++) yield chunk;
}

/** A chunked transfer-coding frame. */
export function chunkFrame(data: Buffer | string): Buffer {
  const bytes = Buffer.from(data);
  return Buffer.concat([Buffer.from(`${bytes.length.toString(16)}\r\n`), bytes, Buffer.from('\r\n')]);
}
