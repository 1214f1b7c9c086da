import {
  DEFAULT_MODEL_ID,
  MODEL_CATALOGUE,
  statusOn,
  type ModelEntry,
  type ModelRules,
  type ModelStatus,
} from './models';

/** How the catalogue is adjusted for one deployment. */
export interface CatalogueOptions {
  /** Replacement per model id (MODEL_ALIASES), over OpenAI's recommendation. */
  aliases?: Record<string, string>;
  /** Models OpenAI added after this release (EXTRA_MODELS), each with the rules of a known one. */
  extraModels?: {id: string; like: string}[];
}

export class CatalogueError extends Error {}

/** Model ids OpenAI uses: lower-case letters, digits, dots and dashes. */
export const MODEL_ID_FORMAT = /^[a-z0-9][a-z0-9._-]{0,63}$/;

/**
 * The model catalogue of this deployment: the built-in entries, the extra
 * models and the replacements it was configured with. Built once, from
 * configuration; a bad option is a CatalogueError naming it.
 */
export class ModelCatalogue {
  private readonly entries = new Map<string, ModelEntry>();

  constructor(options: CatalogueOptions = {}) {
    for (const entry of MODEL_CATALOGUE) this.entries.set(entry.id, entry);
    for (const {id, like} of options.extraModels ?? []) {
      if (!MODEL_ID_FORMAT.test(id)) throw new CatalogueError(`'${id}' is not a model id`);
      if (this.entries.has(id)) throw new CatalogueError(`'${id}' is already known`);
      const model = this.entries.get(like);
      if (!model) throw new CatalogueError(`'${id}' is to be like '${like}', which is not a known model`);
      this.entries.set(id, {id, shutdownDate: null, replacement: null, rules: model.rules});
    }
    for (const [from, to] of Object.entries(options.aliases ?? {})) {
      const entry = this.entries.get(from);
      if (!entry) throw new CatalogueError(`'${from}' is not a known model`);
      const target = this.entries.get(to);
      if (!target) throw new CatalogueError(`'${from}' is to be run on '${to}', which is not a known model`);
      if (target.shutdownDate !== null) {
        throw new CatalogueError(`'${from}' is to be run on '${to}', which OpenAI is shutting down`);
      }
      if (target.legacy) throw new CatalogueError(`'${to}' takes other parameters than '${from}'`);
      this.entries.set(from, {...entry, replacement: to});
    }
  }

  get(id: string): ModelEntry | undefined {
    return this.entries.get(id);
  }

  ids(): string[] {
    return [...this.entries.keys()];
  }

  /** The ids a caller can run today: every known id but those past their shutdown. */
  liveIds(day: string): string[] {
    return [...this.entries.values()].filter(entry => statusOn(entry, day) !== 'retired').map(e => e.id);
  }

  rules(id: string): ModelRules {
    const entry = this.entries.get(id);
    if (!entry) throw new CatalogueError(`'${id}' is not a known model`);
    return entry.rules;
  }

  status(id: string, day: string): ModelStatus {
    const entry = this.entries.get(id);
    if (!entry) throw new CatalogueError(`'${id}' is not a known model`);
    return statusOn(entry, day);
  }

  /**
   * The model a request for `id` runs on when `id` is gone on `day`: its
   * replacement, or the replacement's, until one is still served. Null when
   * there is none.
   */
  successor(id: string, day: string): ModelEntry | null {
    let entry = this.entries.get(id);
    for (let hops = 0; entry?.replacement && hops < 8; hops++) {
      const next = this.entries.get(entry.replacement);
      if (!next) return null;
      if (statusOn(next, day) !== 'retired') return next;
      entry = next;
    }
    return null;
  }
}

export {DEFAULT_MODEL_ID};
