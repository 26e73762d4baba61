// Runs one entry point: loads its module and calls its main(argv). An installed package runs the bundled
// JavaScript, dist/NAME.cjs, with its V8 code cache (load-bundle.js; no TypeScript runtime). A source checkout
// runs src/ through tsx, so an edit never runs against a stale dist/; VMTHUNDER_DIST=1 forces the bundle
// there (to measure it after `npm run build`).
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { loadBundle } from './load-bundle.js'

/**
 * `entry`: path under src/ without extension; `bundle`: the name of its bundle in dist/. `hooks.loaded` runs
 * once the code is loaded, before its main; main gets `hooks` (the agent calls `started` once it has started:
 * its V8 flags, v8-flags.js).
 */
export async function runEntry (entry, bundle, hooks = {}) {
  const checkout = existsSync(new URL(`../src/${entry}.ts`, import.meta.url))
  let module
  if (!checkout || process.env.VMTHUNDER_DIST === '1') {
    module = loadBundle(fileURLToPath(new URL(`../dist/${bundle}.cjs`, import.meta.url))).exports
  } else {
    const { register } = await import('tsx/esm/api')
    register()
    module = await import(`../src/${entry}.ts`)
  }
  hooks.loaded?.()
  process.exitCode = await module.main(process.argv.slice(2), hooks)
}
