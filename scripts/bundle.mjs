// Second build step (after tsc -> dist/): bundles each entry point with its dependencies into one file,
// dist/vmthunderd.cjs and dist/vmthunderctl.cjs, then writes their V8 code caches (bin/load-bundle.js).
// Loading ~700 modules one by one cost the daemon about 1 CPU-second before it did anything; one file costs
// about a third of that, and most of the rest was V8 compiling it, which the code cache saves (npm run
// bench:package). CommonJS, not ES module: node 20 can give a code cache to a vm.Script, not to a module.
// Of classic-level only the native addon stays outside (the plugin below): its JavaScript and that of
// abstract-level were ~25 CommonJS files loaded one by one at every start, without the cache.
// Plain JavaScript on purpose: the build must not need tsx.
import { build } from 'esbuild'
import { execFileSync } from 'node:child_process'
import { readFile, rm } from 'node:fs/promises'

const ENTRIES = { vmthunderd: 'dist/src/daemon/main.js', vmthunderctl: 'dist/src/cli/main.js' }

/**
 * classic-level's binding.js asks node-gyp-build for the addon in its own directory (__dirname), which a bundle
 * does not have: the bundle asks for it in the installed classic-level package instead, at run time. node-gyp-build
 * is bundled (it was one more file compiled from source at every start, outside the code cache).
 */
const classicLevelAddon = {
  name: 'classic-level-addon',
  setup (b) {
    b.onLoad({ filter: /[\\/]classic-level[\\/]binding\.js$/ }, () => ({
      loader: 'js',
      contents: [
        "const { dirname } = require('node:path')",
        "const pkg = require.resolve('classic-level/package.json')",
        "module.exports = require('node-gyp-build')(dirname(pkg))"
      ].join('\n')
    }))
  }
}

class BundleError extends Error {
  name = 'BundleError'
}

for (const [name, entry] of Object.entries(ENTRIES)) {
  // Outputs of earlier builds (ES module bundles, caches) must not be packed or loaded with this one.
  await rm(`dist/${name}.mjs`, { force: true })
  await rm(`dist/${name}.mjs.LEGAL.txt`, { force: true })
  await rm(`dist/${name}.cjs.v8cache`, { force: true })
  const result = await build({
    entryPoints: [entry],
    outfile: `dist/${name}.cjs`,
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node20',
    plugins: [classicLevelAddon],
    external: ['classic-level/package.json'],
    legalComments: 'linked',
    metafile: true,
    // No identifier renaming: stack traces keep their names. ASCII: one non-ASCII character would make V8 hold
    // the whole source as a two-byte string.
    minifyWhitespace: true,
    minifySyntax: true,
    charset: 'ascii',
    logLevel: 'warning'
  })
  // A warning here is e.g. import.meta turned into {} by the CommonJS format: a bug at run time, not now.
  if (result.warnings.length > 0) throw new BundleError(`${name}: esbuild warned (see above); the bundle would misbehave`)
  // load-bundle.js decodes the bundle as latin1, which is only right for ASCII.
  const bytes = await readFile(`dist/${name}.cjs`)
  const high = bytes.findIndex(b => b > 0x7f)
  if (high !== -1) throw new BundleError(`${name}: a non-ASCII byte at offset ${high}`)
  // vm.Script has no loader for import(): every dynamic import must be bundled (load-bundle.js).
  for (const [file, input] of Object.entries(result.metafile.inputs)) {
    for (const imp of input.imports) {
      if (imp.kind === 'dynamic-import' && imp.external === true) throw new BundleError(`${name}: ${file} imports '${imp.path}' dynamically, which a vm.Script cannot load`)
    }
  }
}
execFileSync(process.execPath, ['bin/write-code-cache.js'], { stdio: 'inherit', timeout: 120_000 })
