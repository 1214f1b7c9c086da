/**
 * Reads a Server-Sent Events answer over real HTTP with eventsource-parser,
 * as a caller of the function would, noting when each event arrived.
 */

/** performance.timeOrigin + performance.now(): the clock the fake OpenAI server records on. */
const now = () => performance.timeOrigin + performance.now();

export interface ReceivedEvent {
  id: string | undefined;
  event: string;
  /** The data, parsed as JSON. */
  data: any;
  /** When the event's last byte was read. */
  at: number;
}

export interface StreamAnswer {
  status: number;
  headers: Headers;
  /** The events read; empty for an answer that is not an event stream. */
  events: ReceivedEvent[];
  /** Comment lines (heartbeats). */
  comments: string[];
  /** Body bytes read. */
  bytes: number;
  /** The parsed body of an answer that is not an event stream. */
  json: any;
  /** True when the reading stopped early (`stopAfter`, `stopAfterComment`). */
  aborted: boolean;
}

export interface StreamOptions {
  headers?: Record<string, string>;
  /** Stop reading (and close the connection) after the first event this is true for. */
  stopAfter?: (event: ReceivedEvent) => boolean;
  /** Stop reading after the first comment (a heartbeat). */
  stopAfterComment?: boolean;
}

/** Loaded with import(): the package is ESM only. */
type Parser = typeof import('eventsource-parser');
let parserModule: Promise<Parser> | undefined;

/** POSTs `body` (JSON, or a form as multipart) and reads the answer to its end, or until `stopAfter`. */
export async function postStream(
  url: string,
  body: unknown,
  options: StreamOptions = {},
): Promise<StreamAnswer> {
  const {createParser} = await (parserModule ??= import('eventsource-parser'));
  const abort = new AbortController();
  const response = await fetch(url, {
    method: 'POST',
    ...(body instanceof FormData
      ? {body, headers: options.headers}
      : {body: JSON.stringify(body), headers: {'content-type': 'application/json', ...options.headers}}),
    signal: abort.signal,
  });
  const answer: StreamAnswer = {
    status: response.status,
    headers: response.headers,
    events: [],
    comments: [],
    bytes: 0,
    json: undefined,
    aborted: false,
  };
  if (!response.headers.get('content-type')?.startsWith('text/event-stream')) {
    const text = await response.text();
    answer.bytes = Buffer.byteLength(text);
    answer.json = text ? JSON.parse(text) : undefined;
    return answer;
  }
  let stop = false;
  const parser = createParser({
    onEvent: message => {
      if (stop) return;
      const event: ReceivedEvent = {
        id: message.id,
        event: message.event ?? 'message',
        data: JSON.parse(message.data),
        at: now(),
      };
      answer.events.push(event);
      if (options.stopAfter?.(event)) stop = true;
    },
    onComment: comment => {
      answer.comments.push(comment);
      if (options.stopAfterComment) stop = true;
    },
  });
  const reader = response.body!.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const {done, value} = await reader.read();
    if (done) break;
    answer.bytes += value.length;
    parser.feed(decoder.decode(value, {stream: true}));
    if (stop) {
      answer.aborted = true;
      abort.abort();
      await reader.cancel().catch(() => undefined);
      break;
    }
  }
  return answer;
}

/** The names of the events, in order. */
export const names = (answer: StreamAnswer) => answer.events.map(event => event.event);
