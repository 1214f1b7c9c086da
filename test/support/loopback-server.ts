import type {Server} from 'node:http';
import type {AddressInfo, Socket} from 'node:net';

export interface LoopbackListener {
  /** http://127.0.0.1:PORT */
  origin: string;
  /** Ends every open connection, hung ones included, so close() never waits on a client. */
  destroyConnections(): void;
}

/**
 * Listens on a free loopback port and tracks the server's sockets, as every
 * test server here needs. With `noIdleTimeout`, kept-alive sockets are never
 * closed by the server: a server-side idle close racing a client's reuse would
 * surface as a spurious ECONNRESET.
 */
export async function listenOnLoopback(
  server: Server,
  options: {noIdleTimeout?: boolean} = {},
): Promise<LoopbackListener> {
  if (options.noIdleTimeout) server.keepAliveTimeout = 0;
  const sockets = new Set<Socket>();
  server.on('connection', socket => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    destroyConnections: () => {
      for (const socket of sockets) socket.destroy();
    },
  };
}
