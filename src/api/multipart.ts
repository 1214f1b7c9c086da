import type {IncomingMessage} from 'node:http';
import busboy from 'busboy';
import {AppError, validationError, type FieldProblem} from '../core/errors';
import {ImageBytesCollector, type ImageBytes} from '../core/image-bytes';

/** How much a multipart body may hold; anything past a limit is not kept. */
export interface MultipartLimits {
  /** The whole body, as it arrives: past it the read stops and the answer is 413. */
  maxBytes: number;
  /** Each file. */
  maxFileBytes: number;
  maxFiles: number;
  maxTexts: number;
  /** Each text value. */
  maxTextBytes: number;
}

export interface FormFile {
  /** The part's name as sent, e.g. `image[]`. */
  field: string;
  filename: string;
  /** As the part declares it: only a label, never trusted. */
  contentType: string;
  /** Gathered from the wire into one Blob, hashed as it came. */
  data: ImageBytes;
}

export interface FormText {
  field: string;
  value: string;
}

export interface MultipartForm {
  texts: FormText[];
  files: FormFile[];
  /** What was not kept: parts past a limit, files the caller does not take. */
  problems: FieldProblem[];
}

/** Field names are short; a long one is a mistake, not a field. */
const MAX_FIELD_NAME_BYTES = 200;
const MAX_HEADERS_PER_PART = 16;

/**
 * Reads a multipart/form-data body as it arrives, with busboy. Each file goes
 * from the wire into one Blob, hashed on the way (see ImageBytes); a file part
 * whose name `takesFile` refuses, or that passes its limit, is read past and
 * reported. The whole body is counted as it comes off the wire: past
 * `maxBytes` the read stops (the rest is never read) and the answer is
 * PAYLOAD_TOO_LARGE, as it is at once for a Content-Length over the limit.
 */
export function readMultipart(
  req: IncomingMessage,
  limits: MultipartLimits,
  takesFile: (field: string) => boolean,
): Promise<MultipartForm> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > limits.maxBytes) {
    return Promise.reject(tooLarge(limits.maxBytes, declared));
  }
  const encoding = (req.headers['content-encoding'] ?? 'identity').trim().toLowerCase();
  if (encoding !== 'identity') {
    return Promise.reject(
      new AppError('UNSUPPORTED_MEDIA_TYPE', `Content-Encoding '${encoding.slice(0, 40)}' is not supported`),
    );
  }
  let parser: busboy.Busboy;
  try {
    parser = busboy({
      headers: req.headers,
      defParamCharset: 'utf8',
      limits: {
        fieldNameSize: MAX_FIELD_NAME_BYTES,
        fieldSize: limits.maxTextBytes,
        fields: limits.maxTexts,
        fileSize: limits.maxFileBytes,
        files: limits.maxFiles,
        headerPairs: MAX_HEADERS_PER_PART,
      },
    });
  } catch (error) {
    return Promise.reject(malformed(error));
  }

  return new Promise((resolve, reject) => {
    const form: MultipartForm = {texts: [], files: [], problems: []};
    let received = 0;
    let settled = false;

    const stop = (error: AppError) => {
      if (settled) return;
      settled = true;
      req.off('data', onData);
      // Leaves the rest to readRouteBody, which discards it so the answer reaches the caller.
      req.pause();
      parser.destroy();
      reject(error);
    };
    const onData = (chunk: Buffer) => {
      received += chunk.length;
      if (received > limits.maxBytes) return stop(tooLarge(limits.maxBytes));
      if (!parser.write(chunk)) {
        req.pause();
        parser.once('drain', () => settled || req.resume());
      }
    };

    parser.on('file', (field, stream, info) => {
      // A file cut short is the parser's error too; that one is the one reported.
      stream.on('error', () => undefined);
      if (!takesFile(field)) {
        form.problems.push({field, message: 'unknown field'});
        stream.resume();
        return;
      }
      let collector: ImageBytesCollector | null = new ImageBytesCollector();
      stream.on('data', (chunk: Buffer) => collector?.add(chunk));
      stream.once('limit', () => {
        form.problems.push({field, message: `a file is over the limit of ${limits.maxFileBytes} bytes`});
        collector = null;
      });
      stream.once('end', () => {
        if (!collector) return;
        form.files.push({
          field,
          filename: info.filename ?? field,
          contentType: info.mimeType,
          data: collector.finish(),
        });
      });
    });
    parser.on('field', (field, value, info) => {
      if (info.nameTruncated) {
        form.problems.push({field: `${field}…`, message: 'the name is too long'});
      } else if (info.valueTruncated) {
        form.problems.push({field, message: `is over the limit of ${limits.maxTextBytes} bytes`});
      } else {
        form.texts.push({field, value});
      }
    });
    parser.once('filesLimit', () =>
      form.problems.push({field: '(body)', message: `more than ${limits.maxFiles} files`}),
    );
    parser.once('fieldsLimit', () =>
      form.problems.push({field: '(body)', message: `more than ${limits.maxTexts} text fields`}),
    );
    parser.on('error', error => stop(malformed(error)));
    parser.once('finish', () => {
      if (settled) return;
      settled = true;
      resolve(form);
    });

    req.on('data', onData);
    req.once('end', () => settled || parser.end());
    req.on('error', error => stop(malformed(error)));
    req.once('close', () => {
      if (!req.complete) stop(malformed(new Error('the request ended before its body')));
    });
  });
}

function tooLarge(maxBytes: number, declared?: number): AppError {
  return new AppError(
    'PAYLOAD_TOO_LARGE',
    declared === undefined
      ? `The request body is over the limit of ${maxBytes} bytes`
      : `The request body is ${declared} bytes; the limit is ${maxBytes}`,
  );
}

function malformed(error: unknown): AppError {
  const reason = error instanceof Error ? error.message : String(error);
  return validationError([
    {field: '(body)', message: `not a readable multipart/form-data body: ${reason.slice(0, 200)}`},
  ]);
}
