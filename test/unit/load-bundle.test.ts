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
  writeCodeCache: (path: string) => { cachePath: string, bytes: number }
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

    writeCodeCache(bundle)
    const cached = loadBundle(bundle)
    assert.equal(cached.cache, 'used')
    assert.equal(cached.exports.main(), join('a', 'x'))

    // V8 compares only the source's length: the key must catch this.
    await writeFile(bundle, bundleSource('b'))
    const rebuilt = loadBundle(bundle)
    assert.equal(rebuilt.cache, 'stale')
    assert.equal(rebuilt.exports.main(), join('b', 'x'))

    writeCodeCache(bundle)
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
