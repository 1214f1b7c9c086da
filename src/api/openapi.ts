import {z} from 'zod';
import type {ZodOpenApiOperationObject, ZodOpenApiPathsObject, ZodOpenApiResponsesObject} from 'zod-openapi';
import {ERROR_CODES, type ErrorCode} from '../core/errors';
import {HTTP_STATUS} from './responses';
import type {EventSpecs, Route} from './route';
import {ErrorBodySchema} from './views';

/** Codes any operation may answer with; routes that need a key may also answer UNAUTHENTICATED. */
const EVERY_ROUTE: ErrorCode[] = ['SERVICE_ERROR'];
/** Codes of reading a request body (api/body.ts), for every operation that takes one. */
const BODY_ERRORS: ErrorCode[] = [
  'BAD_REQUEST',
  'INVALID_JSON',
  'VALIDATION_ERROR',
  'PAYLOAD_TOO_LARGE',
  'UNSUPPORTED_MEDIA_TYPE',
];

/** Error responses grouped by status, each listing its codes. */
function errorResponses(route: Route): ZodOpenApiResponsesObject {
  const codes = [
    ...route.errors,
    ...EVERY_ROUTE,
    ...(route.body ? BODY_ERRORS : []),
    ...(route.open ? [] : ['UNAUTHENTICATED' as const]),
  ];
  const byStatus = new Map<number, ErrorCode[]>();
  for (const code of codes) {
    const status = HTTP_STATUS[code];
    byStatus.set(status, [...new Set([...(byStatus.get(status) ?? []), code])]);
  }
  return Object.fromEntries(
    [...byStatus].map(([status, list]) => [
      String(status),
      {description: `Error: ${list.join(', ')}`, content: {'application/json': {schema: ErrorBodySchema}}},
    ]),
  );
}

/**
 * An event stream, documented as the union of its events: each one is an
 * `id`, an `event` name and its `data`, whose JSON has the schema given.
 */
function eventStreamSchema(events: EventSpecs): z.ZodType {
  const variants = Object.entries(events).map(([name, {description, schema}]) =>
    z.object({id: z.string(), event: z.literal(name), data: schema}).meta({description}),
  );
  return z.union(variants).meta({
    description: `Server-Sent Events (${Object.keys(events).join(', ')}), each with an \`id:\`, an \`event:\` and one \`data:\` line of JSON.`,
  });
}

function operationOf(route: Route): ZodOpenApiOperationObject {
  const responses: ZodOpenApiResponsesObject = errorResponses(route);
  for (const [status, spec] of Object.entries(route.responses)) {
    const content = {
      ...(spec.schema
        ? {'application/json': {schema: spec.schema}}
        : Object.fromEntries((spec.mediaTypes ?? []).map(type => [type, {}]))),
      ...(spec.events ? {'text/event-stream': {schema: eventStreamSchema(spec.events)}} : {}),
    };
    responses[status as `2${string}`] = {
      description: spec.description,
      ...(Object.keys(content).length > 0 ? {content} : {}),
    };
  }
  const requestParams = {
    ...(route.params ? {path: route.params} : {}),
    ...(route.query ? {query: route.query} : {}),
    ...(route.headers ? {header: route.headers} : {}),
  } as ZodOpenApiOperationObject['requestParams'];
  return {
    operationId: route.operationId,
    summary: route.summary,
    ...(route.open ? {security: []} : {}),
    ...(Object.keys(requestParams ?? {}).length > 0 ? {requestParams} : {}),
    ...(route.body ? {requestBody: {required: true, content: requestContent(route.body)}} : {}),
    responses,
  };
}

/** A body's media types: JSON, and those the route reads as a stream (multipart uploads). */
function requestContent(body: NonNullable<Route['body']>) {
  const streamed = Object.entries(body.streamed ?? {}).map(([type, spec]) => [type, {schema: spec.schema}]);
  return {'application/json': {schema: body.schema}, ...Object.fromEntries(streamed)};
}

function buildDocument(routes: Route[]): Record<string, unknown> {
  // Loaded here, not at start: only a request for the document needs it.
  const {createDocument} = require('zod-openapi') as typeof import('zod-openapi');
  const paths: ZodOpenApiPathsObject = {};
  for (const route of routes) {
    paths[route.path] = {...paths[route.path], [route.method.toLowerCase()]: operationOf(route)};
  }
  return createDocument({
    openapi: '3.1.0',
    info: {
      title: 'imagegen',
      version: '1.0.0',
      description:
        'Turns a text prompt into stored images with the OpenAI Images API, Cloud Storage and Firestore. ' +
        `Every error is JSON with a stable code: ${ERROR_CODES.join(', ')}.`,
    },
    paths,
    components: {
      securitySchemes: {
        apiKey: {type: 'apiKey', in: 'header', name: 'X-API-Key', description: 'When API_KEYS is set.'},
        bearer: {
          type: 'http',
          scheme: 'bearer',
          description: 'An API key (API_KEYS), or a Google ID token for IAM.',
        },
      },
    },
    // No key needed unless API_KEYS is set; deployed privately, IAM checks a Google ID token first.
    security: [{}, {apiKey: []}, {bearer: []}],
    'x-error-codes': Object.fromEntries(ERROR_CODES.map(code => [code, HTTP_STATUS[code]])),
  }) as unknown as Record<string, unknown>;
}

let cached: {routes: Route[]; document: Record<string, unknown>} | undefined;

/** The OpenAPI 3.1 document of `routes`, built once. */
export function openApiDocument(routes: Route[]): Record<string, unknown> {
  if (cached?.routes !== routes) cached = {routes, document: buildDocument(routes)};
  return cached.document;
}
