// Runs one entry point of src/ (e.g. 'daemon/main'). An installed package runs the compiled JavaScript in
// dist/ (no TypeScript runtime). A source checkout runs src/ through tsx, so an edit never runs against a
// stale dist/; VMTHUNDER_DIST=1 forces dist/ there (to measure it).
import { existsSync } from 'node:fs'

export async function runEntry (entry) {
  const checkout = existsSync(new URL(`../src/${entry}.ts`, import.meta.url))
  if (!checkout || process.env.VMTHUNDER_DIST === '1') {
    await import(`../dist/src/${entry}.js`)
  } else {
    const { register } = await import('tsx/esm/api')
    register()
    await import(`../src/${entry}.ts`)
  }
}
