import type {IncomingMessage, ServerResponse} from 'node:http';

/** How often an open stream sends a comment, so proxies and load balancers do not close it as idle. */
export const HEARTBEAT_MS = 15_000;

export const EVENT_STREAM_TYPE = 'text/event-stream';

/** Whether the Accept header names text/event-stream (with a q above zero). */
export function acceptsEventStream(req: IncomingMessage): boolean {
  const accept = req.headers.accept;
  if (!accept) return false;
  return accept.split(',').some(range => {
    const [type, ...parameters] = range.split(';').map(part => part.trim().toLowerCase());
    if (type !== EVENT_STREAM_TYPE) return false;
    const q = parameters.find(parameter => parameter.startsWith('q='));
    return q === undefined || Number(q.slice(2)) > 0;
  });
}

export interface EventStreamOptions {
  heartbeatMs?: number;
}

/**
 * A Server-Sent Events answer, written lazily: nothing, not even the status
 * line, leaves before the first event, so a failure found before it can still
 * be answered as an ordinary JSON error. Each event gets the next sequence
 * number as its id and is handed to the socket at once. Once the caller has
 * gone, writes are dropped quietly: whoever produces the events carries on.
 */
export class EventStream {
  private nextId = 1;
  private heartbeat: NodeJS.Timeout | undefined;
  private bytes = 0;
  private readonly heartbeatMs: number;

  constructor(
    private readonly res: ServerResponse,
    options: EventStreamOptions = {},
  ) {
    this.heartbeatMs = options.heartbeatMs ?? HEARTBEAT_MS;
    res.once('close', () => this.stopHeartbeat());
  }

  /** True once the headers and the first event have been written. */
  get started(): boolean {
    return this.res.headersSent;
  }

  /** The caller closed the connection before the stream ended. */
  get disconnected(): boolean {
    return this.res.destroyed && !this.res.writableEnded;
  }

  /** Bytes of the body written so far (events and comments). */
  get bytesWritten(): number {
    return this.bytes;
  }

  /** Sets a response header; only before the first event. */
  setHeader(name: string, value: string): void {
    if (!this.started) this.res.setHeader(name, value);
  }

  /** The size on the wire of the next event, given its data already serialized. */
  sizeOf(event: string, json: string): number {
    return Buffer.byteLength(this.head(event, this.nextId)) + Buffer.byteLength(json) + 2;
  }

  /** Writes an event whose data is `data` as JSON. */
  send(event: string, data: unknown): void {
    this.sendSerialized(event, JSON.stringify(data));
  }

  /** Writes an event whose data is already JSON (which never holds a line break). */
  sendSerialized(event: string, json: string): void {
    if (this.res.writableEnded || this.res.destroyed) return;
    if (!this.started) this.open();
    this.write(`${this.head(event, this.nextId++)}${json}\n\n`);
  }

  /** Ends the stream (sending the headers first if no event was). */
  end(): void {
    this.stopHeartbeat();
    if (this.res.writableEnded || this.res.destroyed) return;
    if (!this.started) this.open();
    this.res.end();
  }

  /** An event up to its data; the data is one line, and a blank line ends the event. */
  private head(event: string, id: number): string {
    return `id: ${id}\nevent: ${event}\ndata: `;
  }

  private open(): void {
    this.res.statusCode = 200;
    this.res.setHeader('Content-Type', `${EVENT_STREAM_TYPE}; charset=utf-8`);
    this.res.setHeader('Cache-Control', 'no-cache');
    // Tells nginx-style proxies in front of the function not to hold events back.
    this.res.setHeader('X-Accel-Buffering', 'no');
    this.res.removeHeader('Content-Length');
    this.heartbeat = setInterval(() => this.write(': ping\n\n'), this.heartbeatMs);
    this.heartbeat.unref();
  }

  private write(text: string): void {
    if (this.res.writableEnded || this.res.destroyed) return;
    this.bytes += Buffer.byteLength(text);
    // Backpressure is left to the socket's buffer: what one stream may send is bounded by its caller.
    this.res.write(text);
    // A compression middleware (none is installed today) would otherwise hold events back.
    (this.res as ServerResponse & {flush?: () => void}).flush?.();
  }

  private stopHeartbeat(): void {
    clearInterval(this.heartbeat);
    this.heartbeat = undefined;
  }
}
