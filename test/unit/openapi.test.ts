import {OpenApiValidator} from '../support/openapi-validator';

describe('OpenApiValidator', () => {
  const validator = new OpenApiValidator();
  const error = {error: 'No job', status: 'failed', code: 'JOB_NOT_FOUND'};

  test('accepts a documented response', () => {
    expect(() =>
      validator.check('GET', 'http://x/jobs/0b6f4f0e-0000-4000-8000-000000000000', 404, error),
    ).not.toThrow();
  });

  test('rejects a body that does not match', () => {
    expect(() =>
      validator.check('GET', 'http://x/jobs/0b6f4f0e-0000-4000-8000-000000000000', 404, {
        ...error,
        code: 'NOPE',
      }),
    ).toThrow(/does not match/);
    expect(() => validator.check('GET', 'http://x/health', 200, {status: 'healthy'})).toThrow(
      /does not match/,
    );
  });

  test('rejects an undocumented status or route', () => {
    expect(() => validator.check('GET', 'http://x/health', 418, error)).toThrow(
      /does not document status 418/,
    );
    expect(() => validator.check('PUT', 'http://x/health', 405, error)).toThrow(
      /not in the OpenAPI document/,
    );
  });
});
