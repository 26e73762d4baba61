// manifestFromFile's progress hook: bytes hashed of the total after every chunk, ending at the size; and an
// abort between chunks stops the hashing.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { manifestFromFile } from '../../src/blockstack/manifest.js'
import { signingKeyFromSeed } from '../../src/blockstack/signing.js'
import { makeTempDir, removeDir } from '../helpers/daemon.js'

const MiB = 1024 * 1024

test('onProgress counts bytes hashed of the total, from 0 to the size, once per chunk', { timeout: 30_000 }, async () => {
  const dir = await makeTempDir('vmt-manifest-progress')
  try {
    const path = join(dir, 'image.raw')
    await writeFile(path, Buffer.alloc(20 * MiB + 123, 7))
    const seen: Array<[number, number]> = []
    const manifest = await manifestFromFile({ imageId: 'p', path, blockSizeBytes: 65536, key: signingKeyFromSeed(new Uint8Array(32).fill(3)), onProgress: (done, total) => seen.push([done, total]) })
    assert.deepEqual(seen, [[0, manifest.sizeBytes], [8 * MiB, manifest.sizeBytes], [16 * MiB, manifest.sizeBytes], [manifest.sizeBytes, manifest.sizeBytes]])
  } finally {
    await removeDir(dir)
  }
})

test('an abort from the progress hook stops the hashing before the next chunk', { timeout: 30_000 }, async () => {
  const dir = await makeTempDir('vmt-manifest-progress')
  try {
    const path = join(dir, 'image.raw')
    await writeFile(path, Buffer.alloc(32 * MiB, 1))
    const controller = new AbortController()
    const seen: number[] = []
    await assert.rejects(manifestFromFile({
      imageId: 'p',
      path,
      blockSizeBytes: 65536,
      key: signingKeyFromSeed(new Uint8Array(32).fill(3)),
      signal: controller.signal,
      onProgress: done => { seen.push(done); if (done > 0) controller.abort() }
    }), { name: 'AbortError' })
    assert.deepEqual(seen, [0, 8 * MiB])
  } finally {
    await removeDir(dir)
  }
})
