// What `npm pack` puts in the published package: the code, its types, the README and the
// licence (the same text as the repository's).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const here = join(dirname(fileURLToPath(import.meta.url)), "..");

test("the package carries the code, its types, the README and the licence", () => {
  const [pack] = JSON.parse(execFileSync("npm", ["pack", "--dry-run", "--json"], { cwd: here, encoding: "utf8" }));
  const files = pack.files.map((f) => f.path).sort();
  for (const wanted of ["CHANGELOG.md", "LICENSE", "README.md", "index.d.ts", "index.js", "package.json", "patch.js"]) {
    assert.ok(files.includes(wanted), `${wanted} in ${files}`);
  }
  assert.ok(!files.some((f) => f.startsWith("test/") || f.startsWith("node_modules/")), `${files}`);
  const license = readFileSync(join(here, "LICENSE"), "utf8");
  assert.equal(license, readFileSync(join(here, "../../LICENSE"), "utf8"), "the repository's licence, unchanged");
  const manifest = JSON.parse(readFileSync(join(here, "package.json"), "utf8"));
  assert.equal(manifest.license, "Apache-2.0");
  assert.equal(manifest.publishConfig?.access, "public");
});
