// Second build step (after tsc -> dist/): bundles each entry point with its dependencies into one ES module,
// dist/vmthunderd.mjs and dist/vmthunderctl.mjs. Loading ~700 modules one by one cost the daemon about
// 1 CPU-second before it did anything; one file costs about a third of that (npm run bench:package).
// classic-level stays external: it loads a native addon from its own package.
// Plain JavaScript on purpose: the build must not need tsx.
import { build } from 'esbuild'

const ENTRIES = { vmthunderd: 'dist/src/daemon/main.js', vmthunderctl: 'dist/src/cli/main.js' }

for (const [name, entry] of Object.entries(ENTRIES)) {
  await build({
    entryPoints: [entry],
    outfile: `dist/${name}.mjs`,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    external: ['classic-level'],
    // Bundled CommonJS dependencies call require(); an ES module has none of its own.
    banner: { js: "import { createRequire as __vmtCreateRequire } from 'node:module'; const require = __vmtCreateRequire(import.meta.url);" },
    legalComments: 'linked',
    logLevel: 'warning'
  })
}
