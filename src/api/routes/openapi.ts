import {openApiDocument} from '../openapi';
import {sendJson} from '../responses';
import {defineRoute, type Route} from '../route';

/** Serves the OpenAPI document of `routes` (itself included), built on first request. */
export function describeApiRoute(routes: () => Route[]): Route {
  return defineRoute({
    method: 'GET',
    path: '/openapi.json',
    operationId: 'openapi',
    summary: 'This document',
    open: true,
    responses: {200: {description: 'OpenAPI 3.1'}},
    errors: [],
    async handle(ctx) {
      sendJson(ctx.res, 200, openApiDocument(routes()));
    },
  });
}
