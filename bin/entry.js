// Runs one entry point: loads its module and calls its main(argv). An installed package runs the bundled
// JavaScript, dist/NAME.cjs, with its V8 code cache (load-bundle.js; no TypeScript runtime). A source checkout
// runs src/ through tsx, so an edit never runs against a stale dist/; VMTHUNDER_DIST=1 forces the bundle
// there (to measure it after `npm run build`).
// bin/ is CommonJS (bin/package.json): node starts an ES module entry through its ES module loader, which cost
// the packaged daemon about 10 ms of CPU more per start (node --help runs, 20 interleaved pairs).
'use strict'
const { existsSync } = require('node:fs')
const { join } = require('node:path')
const { pathToFileURL } = require('node:url')
const { loadBundle } = require('./load-bundle.js')

/**
 * `entry`: path under src/ without extension; `bundle`: the name of its bundle in dist/. `hooks.loaded` runs
 * once the code is loaded, before its main; main gets `hooks` (the agent calls `started` once it has started:
 * its V8 flags, v8-flags.js).
 */
async function runEntry (entry, bundle, hooks = {}) {
  const checkout = existsSync(join(__dirname, '..', 'src', `${entry}.ts`))
  let loaded
  if (!checkout || process.env.VMTHUNDER_DIST === '1') {
    loaded = loadBundle(join(__dirname, '..', 'dist', `${bundle}.cjs`)).exports
  } else {
    const { register } = await import('tsx/esm/api')
    register()
    loaded = await import(pathToFileURL(join(__dirname, '..', 'src', `${entry}.ts`)).href)
  }
  hooks.loaded?.()
  process.exitCode = await loaded.main(process.argv.slice(2), hooks)
}

module.exports = { runEntry }
