import {createServer, request, type IncomingHttpHeaders} from 'node:http';
import {listenOnLoopback} from './loopback-server';

/** What a gate knows of a request it forwarded. */
export interface GatedRequest {
  method: string;
  /** Path and query, as received. */
  path: string;
}

/** Answers held back from their callers, until release(). */
export interface Hold {
  /** How many answers are held so far. */
  readonly held: number;
  /** Resolves once at least `count` answers are held. */
  reached(count: number): Promise<void>;
  /** Sends every held answer on, and holds no more. */
  release(): void;
}

export interface HttpGate {
  /** http://127.0.0.1:PORT: give it to the client in place of the target's URL. */
  readonly url: string;
  /**
   * From now on, a request that `matches` is carried out by the target at
   * once, but its answer is held back until the hold is released: the
   * target has done the work (an object is written) while its caller still
   * waits, for as long as the test needs to do something in between.
   */
  hold(matches: (request: GatedRequest) => boolean): Hold;
  close(): Promise<void>;
}

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/**
 * A forwarding HTTP proxy in front of a test server (the GCS test server, the
 * fake OpenAI), that can hold answers back. Requests are forwarded whole;
 * answers are read whole, then sent on or held.
 */
export async function startHttpGate(target: string): Promise<HttpGate> {
  const targetUrl = new URL(target);
  const holds: {matches: (request: GatedRequest) => boolean; state: HoldState}[] = [];

  const server = createServer((req, res) => {
    const gated: GatedRequest = {method: req.method ?? 'GET', path: req.url ?? '/'};
    const headers = {...req.headers, host: targetUrl.host};
    const forwarded = request(
      {
        host: targetUrl.hostname,
        port: targetUrl.port,
        method: gated.method,
        path: gated.path,
        headers,
      },
      upstream => {
        const chunks: Buffer[] = [];
        upstream.on('data', (chunk: Buffer) => chunks.push(chunk));
        upstream.on('end', () => {
          const answer: Answer = {
            status: upstream.statusCode ?? 502,
            headers: upstream.headers,
            body: Buffer.concat(chunks),
          };
          const send = () => {
            if (res.destroyed) return;
            const out = {...answer.headers};
            delete out['transfer-encoding'];
            delete out.connection;
            out['content-length'] = String(answer.body.length);
            res.writeHead(answer.status, out);
            res.end(answer.body);
          };
          const hold = holds.find(h => h.state.open && h.matches(gated));
          if (hold) hold.state.add(send);
          else send();
        });
        upstream.on('error', () => res.destroy());
      },
    );
    forwarded.on('error', () => res.destroy());
    req.pipe(forwarded);
  });
  const listener = await listenOnLoopback(server);

  return {
    url: listener.origin,
    hold(matches) {
      const state = new HoldState();
      holds.push({matches, state});
      return state;
    },
    close: () =>
      new Promise<void>(resolve => {
        for (const {state} of holds) state.release();
        server.close(() => resolve());
        listener.destroyConnections();
      }),
  };
}

class HoldState implements Hold {
  open = true;
  private readonly pending: (() => void)[] = [];
  private readonly waiters: {count: number; resolve: () => void}[] = [];
  private count = 0;

  get held(): number {
    return this.count;
  }

  add(send: () => void): void {
    this.pending.push(send);
    this.count++;
    for (const waiter of this.waiters.filter(w => w.count <= this.count)) waiter.resolve();
  }

  reached(count: number): Promise<void> {
    if (this.count >= count) return Promise.resolve();
    return new Promise(resolve => this.waiters.push({count, resolve}));
  }

  release(): void {
    this.open = false;
    for (const send of this.pending.splice(0)) send();
  }
}
