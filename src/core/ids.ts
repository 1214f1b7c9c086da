const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/i;

/** Ids are UUIDs we minted; anything else is refused before it reaches a store. */
export function isId(value: string): boolean {
  return UUID.test(value);
}

/** Where an image's bytes live; ids are ours, never the caller's. */
export function objectPathFor(jobId: string, index: number, imageId: string, extension: string): string {
  return `images/${jobId}/${String(index).padStart(3, '0')}-${imageId}.${extension}`;
}

const OBJECT_PATH = /^images\/([^/]+)\/\d{3,}-([^/.]+)\.[a-z]+$/;

/** The image id an object path made by `objectPathFor` carries; null for any other path. */
export function imageIdOfObjectPath(path: string): string | null {
  const match = OBJECT_PATH.exec(path);
  return match && isId(match[1]!) && isId(match[2]!) ? match[2]! : null;
}

export function jobPrefix(jobId: string): string {
  return `images/${jobId}/`;
}
