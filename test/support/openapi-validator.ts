import Ajv2020 from 'ajv/dist/2020';
import addFormats from 'ajv-formats';
import {openApiDocument} from '../../src/api/openapi';
import {ROUTES} from '../../src/api/routes';

interface Operation {
  responses: Record<string, {content?: Record<string, {schema?: object}>}>;
}

/**
 * Checks live responses against the served OpenAPI document: the status must
 * be documented for the operation, and a JSON body must match its schema.
 */
export class OpenApiValidator {
  private readonly ajv = new Ajv2020({strict: false, allErrors: true});
  private readonly doc = openApiDocument(ROUTES) as {paths: Record<string, Record<string, Operation>>};
  readonly checked: string[] = [];

  constructor() {
    addFormats(this.ajv);
    this.ajv.addSchema(this.doc, 'openapi.json');
  }

  private operationFor(method: string, pathname: string): {template: string; operation: Operation} {
    for (const [template, item] of Object.entries(this.doc.paths)) {
      const pattern = new RegExp(`^${template.replace(/\{[^}]+\}/g, '[^/]+')}$`);
      const operation = item[method.toLowerCase()];
      if (pattern.test(pathname) && operation) return {template, operation};
    }
    throw new Error(`${method} ${pathname} is not in the OpenAPI document`);
  }

  /** Throws with the reasons when the response does not match the document. */
  check(method: string, url: string, status: number, body: unknown): void {
    const {pathname} = new URL(url);
    const {template, operation} = this.operationFor(method, pathname);
    const response = operation.responses[String(status)];
    if (!response) throw new Error(`${method} ${template} does not document status ${status}`);
    const schema = response.content?.['application/json']?.schema;
    if (schema) {
      const validate = this.ajv.compile({
        $ref: `openapi.json#/paths/${encodePointer(template)}/${method.toLowerCase()}/responses/${status}/content/application~1json/schema`,
      });
      if (!validate(body)) {
        throw new Error(
          `${method} ${template} ${status} body does not match: ${this.ajv.errorsText(validate.errors)}`,
        );
      }
    }
    this.checked.push(`${method} ${template} ${status}`);
  }

  private readonly eventValidators = new Map<string, ReturnType<Ajv2020['compile']>>();

  /** Throws with the reasons when an event of a 200 event stream does not match the document. */
  checkEvent(
    method: string,
    url: string,
    event: {id: string | undefined; event: string; data: unknown},
  ): void {
    const {pathname} = new URL(url);
    const {template, operation} = this.operationFor(method, pathname);
    if (!operation.responses['200']?.content?.['text/event-stream']?.schema) {
      throw new Error(`${method} ${template} documents no event stream`);
    }
    const ref = `openapi.json#/paths/${encodePointer(template)}/${method.toLowerCase()}/responses/200/content/text~1event-stream/schema`;
    let validate = this.eventValidators.get(ref);
    if (!validate) {
      validate = this.ajv.compile({$ref: ref});
      this.eventValidators.set(ref, validate);
    }
    if (!validate(event)) {
      throw new Error(
        `${method} ${template} event ${event.event} does not match: ${this.ajv.errorsText(validate.errors)}`,
      );
    }
    this.checked.push(`${method} ${template} event ${event.event}`);
  }
}

function encodePointer(segment: string): string {
  return segment.replace(/~/g, '~0').replace(/\//g, '~1').replace(/\{/g, '%7B').replace(/\}/g, '%7D');
}
