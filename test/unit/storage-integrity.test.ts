// Bit rot in the cache file: blocks stored before a restart are verified on first read, by the scrub, and
// whenever they go to a peer; a bad one is dropped (recorded first), counted and fetched again.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, writeFile, rm, open } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { manifestFromFile, type Manifest } from '../../src/blockstack/manifest.js'
import { signingKeyFromSeed } from '../../src/blockstack/signing.js'
import { BlockCache } from '../../src/blockstack/cache.js'
import { Bitmap } from '../../src/blockstack/bitmap.js'
import { memoryPresenceStore, type PresenceStore } from '../../src/blockstack/presence.js'
import { fileBlockSource } from '../../src/blockstack/file-source.js'
import type { BlockSource } from '../../src/blockstack/types.js'

const BS = 4096
const DATA_BLOCKS = 24
const ZERO_BLOCKS = 8

interface Fixture { dir: string, image: string, bytes: Buffer, manifest: Manifest, cachePath: string, presence: PresenceStore & { chunks: Map<number, Uint8Array> } }

/** An image of DATA_BLOCKS random blocks then ZERO_BLOCKS zero blocks, its manifest, and no cache file yet. */
async function emptyCache (): Promise<Fixture> {
  const dir = await mkdtemp(join(tmpdir(), 'vmt-integ-'))
  const bytes = Buffer.concat([randomBytes(BS * DATA_BLOCKS), Buffer.alloc(BS * ZERO_BLOCKS)])
  const image = join(dir, 'img.raw')
  await writeFile(image, bytes)
  const manifest = await manifestFromFile({ imageId: 'img', path: image, blockSizeBytes: BS, key: signingKeyFromSeed(randomBytes(32)) })
  return { dir, image, bytes, manifest, cachePath: join(dir, 'cache'), presence: memoryPresenceStore() }
}

async function filledCache (): Promise<Fixture> {
  const f = await emptyCache()
  const { dir, image, bytes, manifest, cachePath, presence } = f
  const file = fileBlockSource(image)
  const cache = await BlockCache.open({ manifest, path: cachePath, presence, source: file })
  await cache.read(0, bytes.length, AbortSignal.timeout(5000))
  await cache.close()
  await file.close()
  return { dir, image, bytes, manifest, cachePath, presence }
}

/** Flips one byte in each given block of the cache file, as a bad disk would. */
async function flip (path: string, blocks: number[]): Promise<void> {
  const fh = await open(path, 'r+')
  try {
    for (const block of blocks) {
      const at = block * BS + 123
      const one = Buffer.alloc(1)
      await fh.read(one, 0, 1, at)
      one[0] ^= 0x5a
      await fh.write(one, 0, 1, at)
    }
  } finally { await fh.close() }
}

function countingSource (image: string): BlockSource & { fetched: number[], close: () => Promise<void> } {
  const file = fileBlockSource(image)
  const fetched: number[] = []
  return {
    fetched,
    async fetch (m, indexes, options) { fetched.push(...indexes); return await file.fetch(m, indexes, options) },
    close: file.close
  }
}

function storedPresent (presence: Fixture['presence'], manifest: Manifest, index: number): boolean {
  return new Bitmap(manifest.blockCount, presence.chunks.get(0)).get(index)
}

/** Resolves once `block` is present again (blocks-added event), bounded by the signal. */
async function presentAgain (cache: BlockCache, block: number, signal: AbortSignal): Promise<void> {
  if (cache.has(block)) return
  await new Promise<void>((resolve, reject) => {
    const off = cache.onBlocksAdded(added => { if (added.includes(block)) { off(); resolve() } })
    signal.addEventListener('abort', () => { off(); reject(signal.reason) }, { once: true })
  })
}

test('a cache file made now has nothing to check; reopened, its stored and zero blocks are checked', { timeout: 20_000 }, async () => {
  const { dir, image, manifest, cachePath, presence } = await emptyCache()
  try {
    const file = fileBlockSource(image)
    const cache = await BlockCache.open({ manifest, path: cachePath, presence, source: file })
    // The zero blocks are present (holes of the new file) but there is nothing on disk that could have rotted.
    assert.equal(cache.presentCount(), ZERO_BLOCKS)
    // So the first scrub pass (it covers the unchecked blocks) reads nothing.
    assert.equal(cache.stats().uncheckedBlocks, 0)
    await cache.read(0, BS * 2, AbortSignal.timeout(5000))
    await cache.flush()
    await cache.close()
    const reopened = await BlockCache.open({ manifest, path: cachePath, presence, source: file })
    assert.equal(reopened.stats().uncheckedBlocks, ZERO_BLOCKS + 2)
    await reopened.close()
    await file.close()
  } finally { await rm(dir, { recursive: true, force: true }) }
})

test('first read after a restart verifies stored blocks: flipped bytes are never returned', { timeout: 20_000 }, async () => {
  const f = await filledCache()
  try {
    const bad = [0, 5, 6, 23, DATA_BLOCKS + 2] // the last one is a zero block (a hole written over)
    await flip(f.cachePath, bad)
    const source = countingSource(f.image)
    const cache = await BlockCache.open({ manifest: f.manifest, path: f.cachePath, presence: f.presence, source })
    assert.equal(cache.stats().uncheckedBlocks, f.manifest.blockCount)
    const whole = Buffer.from(await cache.read(0, f.bytes.length, AbortSignal.timeout(5000)))
    assert.equal(whole.compare(f.bytes), 0, 'the read returned the image as registered')
    const stats = cache.stats()
    assert.equal(stats.corruptCachedBlocks, bad.length)
    assert.equal(stats.corruptBlocks, bad.length)
    assert.equal(stats.uncheckedBlocks, 0)
    // Data blocks were fetched again; the zero block was zeroed in place.
    assert.deepEqual(source.fetched.sort((a, b) => a - b), bad.filter(b => b < DATA_BLOCKS))
    await cache.flush()
    await cache.close()
    // After another restart everything verifies with no fetch at all.
    const again = countingSource(f.image)
    const reopened = await BlockCache.open({ manifest: f.manifest, path: f.cachePath, presence: f.presence, source: again })
    assert.equal(Buffer.from(await reopened.read(0, f.bytes.length, AbortSignal.timeout(5000))).compare(f.bytes), 0)
    assert.equal(reopened.stats().corruptCachedBlocks, 0)
    assert.deepEqual(again.fetched, [])
    await reopened.close()
    await source.close(); await again.close()
  } finally { await rm(f.dir, { recursive: true, force: true }) }
})

test('the scrub finds bad blocks at idle, drops them (recorded first) and fetches them again', { timeout: 20_000 }, async () => {
  const f = await filledCache()
  try {
    const bad = [3, 11, 17]
    await flip(f.cachePath, bad)
    const source = countingSource(f.image)
    const cache = await BlockCache.open({ manifest: f.manifest, path: f.cachePath, presence: f.presence, source, scrub: { rateBytesPerSec: 64 * 1024 * 1024 } })
    const scrubber = cache.startScrub()
    await scrubber.waitPasses(1)
    assert.deepEqual(scrubber.stats().corruptBlocks, bad.length)
    assert.equal(cache.stats().corruptCachedBlocks, bad.length)
    assert.equal(cache.stats().uncheckedBlocks, 0)
    const signal = AbortSignal.timeout(10_000)
    for (const block of bad) await presentAgain(cache, block, signal)
    await cache.flush()
    for (const block of bad) assert.ok(storedPresent(f.presence, f.manifest, block), `block ${block} recorded present again`)
    assert.deepEqual(source.fetched.sort((a, b) => a - b), bad)
    assert.equal(Buffer.from(await cache.read(0, f.bytes.length, signal)).compare(f.bytes), 0)
    await cache.close()
    await source.close()
  } finally { await rm(f.dir, { recursive: true, force: true }) }
})

test('a block that rots while open is refused to peers, recorded absent before it is fetched again', { timeout: 20_000 }, async () => {
  const f = await filledCache()
  try {
    let releaseFetch!: () => void
    const fetchGate = new Promise<void>(resolve => { releaseFetch = resolve })
    const file = fileBlockSource(f.image)
    let presentWhenFetched: boolean | undefined
    const source: BlockSource = {
      async fetch (m, indexes, options) {
        presentWhenFetched = storedPresent(f.presence, f.manifest, 9)
        await fetchGate
        return await file.fetch(m, indexes, options)
      }
    }
    const cache = await BlockCache.open({ manifest: f.manifest, path: f.cachePath, presence: f.presence, source })
    assert.equal(Buffer.from(await cache.readBlock(9)).compare(f.bytes.subarray(9 * BS, 10 * BS)), 0)
    await flip(f.cachePath, [9])
    await assert.rejects(cache.readBlock(9), { name: 'BlockNotPresentError' })
    assert.equal(cache.has(9), false)
    assert.equal(storedPresent(f.presence, f.manifest, 9), false)
    assert.equal(cache.stats().corruptCachedBlocks, 1)
    releaseFetch()
    await presentAgain(cache, 9, AbortSignal.timeout(10_000))
    assert.equal(presentWhenFetched, false, 'the drop was recorded before the refetch began')
    assert.equal(Buffer.from(await cache.readBlock(9)).compare(f.bytes.subarray(9 * BS, 10 * BS)), 0)
    await cache.close()
    await file.close()
  } finally { await rm(f.dir, { recursive: true, force: true }) }
})

test('the scrub waits while reads come in and stops on close', { timeout: 20_000 }, async () => {
  const f = await filledCache()
  try {
    const source = countingSource(f.image)
    // 4 KiB/s: one block a second, so the pass is still running when the cache closes.
    const cache = await BlockCache.open({ manifest: f.manifest, path: f.cachePath, presence: f.presence, source, scrub: { rateBytesPerSec: BS } })
    await cache.read(0, 10, AbortSignal.timeout(5000)) // a read: the cache is busy for a while
    const unchecked = cache.stats().uncheckedBlocks
    assert.ok(unchecked >= f.manifest.blockCount - 2, `unchecked ${unchecked}`)
    await cache.close()
    await source.close()
  } finally { await rm(f.dir, { recursive: true, force: true }) }
})
