// Runs one entry point. An installed package runs the bundled JavaScript, dist/NAME.mjs (no TypeScript
// runtime). A source checkout runs src/ through tsx, so an edit never runs against a stale dist/;
// VMTHUNDER_DIST=1 forces the bundle there (to measure it after `npm run build`).
import { existsSync } from 'node:fs'

/** `entry`: path under src/ without extension; `bundle`: the name of its bundle in dist/. */
export async function runEntry (entry, bundle) {
  const checkout = existsSync(new URL(`../src/${entry}.ts`, import.meta.url))
  if (!checkout || process.env.VMTHUNDER_DIST === '1') {
    await import(`../dist/${bundle}.mjs`)
  } else {
    const { register } = await import('tsx/esm/api')
    register()
    await import(`../src/${entry}.ts`)
  }
}
