import {Writable} from 'node:stream';
import {createLogger, traceFields} from '../../src/logger';

describe('traceFields', () => {
  test('X-Cloud-Trace-Context gives the trace, span (hex) and sampling', () => {
    expect(traceFields({'x-cloud-trace-context': '105445aa7843bc8bf206b12000100000/1;o=1'}, 'proj')).toEqual({
      'logging.googleapis.com/trace': 'projects/proj/traces/105445aa7843bc8bf206b12000100000',
      'logging.googleapis.com/spanId': '0000000000000001',
      'logging.googleapis.com/trace_sampled': true,
    });
  });

  test('W3C traceparent works too', () => {
    expect(
      traceFields({traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'}, 'proj'),
    ).toEqual({
      'logging.googleapis.com/trace': 'projects/proj/traces/4bf92f3577b34da6a3ce929d0e0e4736',
      'logging.googleapis.com/spanId': '00f067aa0ba902b7',
      'logging.googleapis.com/trace_sampled': true,
    });
  });

  test('without a project the bare trace id is kept; garbage gives nothing', () => {
    expect(traceFields({'x-cloud-trace-context': 'abcdefabcdefabcdefabcdefabcdefab'}, undefined)).toEqual({
      'logging.googleapis.com/trace': 'abcdefabcdefabcdefabcdefabcdefab',
    });
    expect(traceFields({'x-cloud-trace-context': 'nope', traceparent: 'also-nope'}, 'proj')).toEqual({});
  });
});

describe('createLogger', () => {
  test('writes Cloud Logging JSON lines: severity, message, time; hides keys', () => {
    const lines: Record<string, unknown>[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
        done();
      },
    });
    const logger = createLogger('info', sink);
    logger.warn({apiKey: 'sk-secret', headers: {authorization: 'Bearer x'}}, 'careful');
    logger.debug('not at info');
    expect(lines).toEqual([
      {
        severity: 'WARNING',
        time: expect.any(String),
        message: 'careful',
        apiKey: '[redacted]',
        headers: {authorization: '[redacted]'},
      },
    ]);
  });
});
