// RFC 6902 (JSON Patch) and RFC 7396 (JSON Merge Patch), applied to a copy: the document a
// caller holds is never changed under it.

const clone = (v) => (v === undefined ? v : structuredClone(v));

function pointer(path) {
  if (path === "") return [];
  if (!path.startsWith("/")) throw new Error(`bad JSON pointer ${JSON.stringify(path)}`);
  return path.slice(1).split("/").map((t) => t.replaceAll("~1", "/").replaceAll("~0", "~"));
}

function parentOf(doc, tokens) {
  let node = doc;
  for (const t of tokens.slice(0, -1)) {
    if (node === null || typeof node !== "object" || !(t in node)) throw new Error(`no ${tokens.join("/")}`);
    node = node[t];
  }
  return node;
}

function get(doc, tokens) {
  let node = doc;
  for (const t of tokens) {
    if (node === null || typeof node !== "object" || !(t in node)) throw new Error(`no /${tokens.join("/")}`);
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

function add(doc, tokens, value) {
  if (tokens.length === 0) return value;
  const parent = parentOf(doc, tokens);
  const last = tokens[tokens.length - 1];
  if (Array.isArray(parent)) parent.splice(index(parent, last, true), 0, value);
  else if (parent !== null && typeof parent === "object") parent[last] = value;
  else throw new Error("add into a non-container");
  return doc;
}

function remove(doc, tokens) {
  if (tokens.length === 0) return undefined;
  const parent = parentOf(doc, tokens);
  const last = tokens[tokens.length - 1];
  if (Array.isArray(parent)) parent.splice(index(parent, last, false), 1);
  else if (parent !== null && typeof parent === "object" && last in parent) delete parent[last];
  else throw new Error(`no ${last} to remove`);
  return doc;
}

function equal(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** Applies an RFC 6902 patch to a copy of `doc`; throws if an operation fails. */
export function applyJsonPatch(doc, patch) {
  let out = clone(doc);
  for (const op of patch) {
    const path = pointer(op.path);
    switch (op.op) {
      case "add":
        out = add(out, path, clone(op.value));
        break;
      case "remove":
        out = remove(out, path);
        break;
      case "replace": {
        if (path.length === 0) {
          out = clone(op.value);
          break;
        }
        get(out, path);
        const parent = parentOf(out, path);
        const last = path[path.length - 1];
        parent[Array.isArray(parent) ? index(parent, last, false) : last] = clone(op.value);
        break;
      }
      case "move": {
        const from = pointer(op.from);
        const value = get(out, from);
        out = add(remove(out, from), path, value);
        break;
      }
      case "copy":
        out = add(out, path, clone(get(out, pointer(op.from))));
        break;
      case "test":
        if (!equal(get(out, path), op.value)) throw new Error(`test failed at ${op.path}`);
        break;
      default:
        throw new Error(`unknown operation ${op.op}`);
    }
  }
  return out;
}

/** Applies an RFC 7396 merge patch to a copy of `doc`. */
export function applyMergePatch(doc, patch) {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return clone(patch);
  const out = doc !== null && typeof doc === "object" && !Array.isArray(doc) ? clone(doc) : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = applyMergePatch(out[k], v);
  }
  return out;
}
