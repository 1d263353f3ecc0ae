// RFC 6902 (JSON Patch) and RFC 7396 (JSON Merge Patch), copy-on-write: each operation copies
// only the objects and arrays on its path (each at most once per patch), so the new document
// shares every untouched part with the old one, and the document a caller holds is never
// changed under it.

const clone = (v) => (v === undefined ? v : structuredClone(v));
const isContainer = (v) => v !== null && typeof v === "object";

function pointer(path) {
  if (typeof path !== "string") throw new Error(`bad JSON pointer ${JSON.stringify(path)}`);
  if (path === "") return [];
  if (!path.startsWith("/")) throw new Error(`bad JSON pointer ${JSON.stringify(path)}`);
  return path.slice(1).split("/").map((t) => t.replaceAll("~1", "/").replaceAll("~0", "~"));
}

function has(node, t) {
  return isContainer(node) && (Array.isArray(node) ? /^(0|[1-9][0-9]*)$/.test(t) && Number(t) < node.length : Object.hasOwn(node, t));
}

function get(doc, tokens) {
  let node = doc;
  for (const t of tokens) {
    if (!has(node, t)) throw new Error(`no /${tokens.join("/")}`);
    node = node[t];
  }
  return node;
}

function index(array, token, adding) {
  if (adding && token === "-") return array.length;
  if (!/^(0|[1-9][0-9]*)$/.test(token)) throw new Error(`bad array index ${token}`);
  const i = Number(token);
  if (i > array.length || (!adding && i === array.length)) throw new Error(`index ${i} out of range`);
  return i;
}

/** A patch in progress: the root, and the containers this patch made (safe to change). */
class Draft {
  constructor(doc) {
    this.root = doc;
    this.own = new WeakSet();
  }

  /** `node` itself if this patch made it, else a shallow copy of it that it now owns. */
  mine(node) {
    if (!isContainer(node) || this.own.has(node)) return node;
    const copy = Array.isArray(node) ? node.slice() : { ...node };
    this.own.add(copy);
    return copy;
  }

  /** The parent of `tokens`, owned, with every container above it owned too. */
  parent(tokens) {
    this.root = this.mine(this.root);
    let node = this.root;
    for (const t of tokens.slice(0, -1)) {
      if (!has(node, t)) throw new Error(`no /${tokens.join("/")}`);
      node = node[t] = this.mine(node[t]);
    }
    if (!isContainer(node)) throw new Error(`/${tokens.join("/")} is inside a non-container`);
    return node;
  }

  add(tokens, value) {
    if (tokens.length === 0) {
      this.root = value;
      return;
    }
    const parent = this.parent(tokens);
    const last = tokens[tokens.length - 1];
    if (Array.isArray(parent)) parent.splice(index(parent, last, true), 0, value);
    else parent[last] = value;
  }

  /** Sets the member or element at `tokens`, which exists, keeping its place. */
  replace(tokens, value) {
    if (tokens.length === 0) {
      this.root = value;
      return;
    }
    const parent = this.parent(tokens);
    const last = tokens[tokens.length - 1];
    parent[Array.isArray(parent) ? index(parent, last, false) : last] = value;
  }

  remove(tokens) {
    if (tokens.length === 0) {
      this.root = undefined;
      return;
    }
    const parent = this.parent(tokens);
    const last = tokens[tokens.length - 1];
    if (Array.isArray(parent)) parent.splice(index(parent, last, false), 1);
    else if (Object.hasOwn(parent, last)) delete parent[last];
    else throw new Error(`no /${tokens.join("/")} to remove`);
  }
}

function equal(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** Applies an RFC 6902 patch to `doc` without changing it; throws if an operation fails. */
export function applyJsonPatch(doc, patch) {
  if (!Array.isArray(patch)) throw new Error("a JSON Patch is an array of operations");
  const draft = new Draft(doc);
  for (const op of patch) {
    const path = pointer(op?.path);
    switch (op.op) {
      case "add":
        draft.add(path, clone(op.value));
        break;
      case "remove":
        draft.remove(path);
        break;
      case "replace":
        get(draft.root, path);
        draft.replace(path, clone(op.value));
        break;
      case "move": {
        const from = pointer(op.from);
        const value = get(draft.root, from);
        draft.remove(from);
        draft.add(path, value);
        break;
      }
      case "copy":
        draft.add(path, clone(get(draft.root, pointer(op.from))));
        break;
      case "test":
        if (!equal(get(draft.root, path), op.value)) throw new Error(`test failed at ${op.path}`);
        break;
      default:
        throw new Error(`unknown operation ${op.op}`);
    }
  }
  return draft.root;
}

/** Applies an RFC 7396 merge patch to `doc` without changing it: only the objects the patch
 *  reaches are copied. */
export function applyMergePatch(doc, patch) {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return clone(patch);
  const out = doc !== null && typeof doc === "object" && !Array.isArray(doc) ? { ...doc } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = applyMergePatch(out[k], v);
  }
  return out;
}
