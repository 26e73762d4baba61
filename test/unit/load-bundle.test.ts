// The packaged bundles' loader (bin/load-bundle.js): a cache written for a bundle is used, and one that does
// not belong to the bundle as it is now (rebuilt, even to the same length, or a damaged file) is never given
// to V8: the bundle then compiles from source and runs its current code.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { readFile, writeFile } from 'node:fs/promises'
import { makeTempDir, removeDir } from '../helpers/daemon.js'

/** bin/ is plain JavaScript without declarations (the package holds no .ts files): its shape, as used here. */
interface LoadBundleModule {
  loadBundle: (path: string) => { exports: { main: () => string }, cache: string }
  writeCodeCache: (path: string) => Promise<{ cachePath: string, bytes: number, warmUpError?: Error }>
  codeCachePath: (path: string) => string
}
const LOADER = '../../bin/load-bundle.js'
const { loadBundle, writeCodeCache, codeCachePath } = await import(LOADER) as LoadBundleModule

/** A CommonJS bundle whose main() returns `answer`; the same length for any one-letter answer. */
const bundleSource = (answer: string): string =>
  `const { join } = require('node:path')\nmodule.exports = { main: () => join('${answer}', __filename.length > 0 ? 'x' : 'y') }\n`

test('a written cache is used; a rebuilt bundle of the same length or a damaged cache is not', { timeout: 30_000 }, async () => {
  const dir = await makeTempDir('vmt-lb')
  try {
    const bundle = join(dir, 'b.cjs')
    await writeFile(bundle, bundleSource('a'))
    const first = loadBundle(bundle)
    assert.equal(first.cache, 'absent')
    assert.equal(first.exports.main(), join('a', 'x'))

    await writeCodeCache(bundle)
    const cached = loadBundle(bundle)
    assert.equal(cached.cache, 'used')
    assert.equal(cached.exports.main(), join('a', 'x'))

    // V8 compares only the source's length: the key must catch this.
    await writeFile(bundle, bundleSource('b'))
    const rebuilt = loadBundle(bundle)
    assert.equal(rebuilt.cache, 'stale')
    assert.equal(rebuilt.exports.main(), join('b', 'x'))

    await writeCodeCache(bundle)
    const file = await readFile(codeCachePath(bundle))
    file[file.length - 1] ^= 0xff
    await writeFile(codeCachePath(bundle), file)
    const damaged = loadBundle(bundle)
    assert.equal(damaged.cache, 'stale')
    assert.equal(damaged.exports.main(), join('b', 'x'))

    await writeFile(codeCachePath(bundle), Buffer.alloc(0))
    assert.equal(loadBundle(bundle).cache, 'stale')
  } finally {
    await removeDir(dir)
  }
})

/** A bundle whose warmUp runs `later` (a function compiled only when called) or not, then calls ready. */
const warmSource = (callLater: boolean, fail = false): string => [
  'function later () {',
  ...Array.from({ length: 200 }, (_, i) => `  globalThis.__warm = (globalThis.__warm ?? 0) + ${i}`),
  '}',
  'module.exports = {',
  '  main: () => 1,',
  `  warmUp: async ({ ready }) => { ${callLater ? 'later()' : ''}; ${fail ? "throw new Error('no warm-up here')" : 'ready()'} }`,
  '}'
].join('\n')

test('a bundle with warmUp is cached once warmed up, with what its warm-up compiled; a failed warm-up still leaves a cache', { timeout: 30_000 }, async () => {
  const dir = await makeTempDir('vmt-lbw')
  try {
    const cold = join(dir, 'cold.cjs')
    const warm = join(dir, 'warm.cjs')
    await writeFile(cold, warmSource(false))
    await writeFile(warm, warmSource(true))
    const coldBytes = (await writeCodeCache(cold)).bytes
    const warmed = await writeCodeCache(warm)
    assert.equal(warmed.warmUpError, undefined)
    // later()'s bytecode is in the cache: a 200-statement function is well over 1 KiB of it.
    assert.ok(warmed.bytes > coldBytes + 1024, `warmed ${warmed.bytes} bytes, not warmed ${coldBytes}`)
    assert.equal(loadBundle(warm).cache, 'used')

    const failing = join(dir, 'failing.cjs')
    await writeFile(failing, warmSource(true, true))
    const failed = await writeCodeCache(failing)
    assert.match(String(failed.warmUpError), /no warm-up here/)
    assert.equal(loadBundle(failing).cache, 'used')
  } finally {
    await removeDir(dir)
  }
})
