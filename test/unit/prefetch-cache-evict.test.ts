// BlockCache.evict (the cache side of the quota): bits cleared and persisted before the holes are punched,
// disk space freed, evicted blocks fetched again on the next read with the right data, skipped blocks
// (pending, zero) left alone, and a reader never gets a punched hole.

import { setMaxListeners } from 'node:events'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, writeFile, rm, stat, readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { manifestFromFile } from '../../src/blockstack/manifest.js'
import { signingKeyFromSeed } from '../../src/blockstack/signing.js'
import { BlockCache, fallocatePunchHole, type PunchHole } from '../../src/blockstack/cache.js'
import { memoryPresenceStore } from '../../src/blockstack/presence.js'
import { fileBlockSource } from '../../src/blockstack/file-source.js'
import { Bitmap } from '../../src/blockstack/bitmap.js'

const BS = 64 * 1024
const BLOCKS = 32

async function setup (punchHole?: PunchHole) {
  const dir = await mkdtemp(join(tmpdir(), 'vmt-evict-'))
  const bytes = Buffer.concat([randomBytes(BS * 20), Buffer.alloc(BS * 4), randomBytes(BS * 8)])
  const image = join(dir, 'img.raw')
  await writeFile(image, bytes)
  const manifest = await manifestFromFile({ imageId: 'img', path: image, blockSizeBytes: BS, key: signingKeyFromSeed(randomBytes(32)) })
  const presence = memoryPresenceStore()
  const file = fileBlockSource(image)
  let fetches = 0
  const cache = await BlockCache.open({
    manifest,
    path: join(dir, 'cache.raw'),
    presence,
    source: { async fetch (m, indexes, options) { fetches++; return await file.fetch(m, indexes, options) } }
  })
  return { dir, bytes, manifest, presence, cache, fetches: () => fetches, close: async () => { await cache.close(); await file.close(); await rm(dir, { recursive: true, force: true }) } }
}

test('evict clears and persists presence before punching, frees the space, and refetches correct data', { timeout: 20_000 }, async () => {
  const order: string[] = []
  let f!: Awaited<ReturnType<typeof setup>>
  const punch: PunchHole = async (path, offset, length, signal) => {
    // The presence store already says absent when the hole is punched.
    const saved = new Bitmap(BLOCKS, await f.presence.load(BLOCKS))
    order.push(`punch ${offset / BS}+${length / BS} saved=${saved.get(offset / BS) ? 'present' : 'absent'}`)
    await fallocatePunchHole(path, offset, length, signal)
  }
  f = await setup(punch)
  try {
    const signal = AbortSignal.timeout(10_000)
    const all = Array.from({ length: BLOCKS }, (_, i) => i)
    await f.cache.ensure(all, { signal })
    await f.cache.flush()
    const path = join(f.dir, 'cache.raw')
    const before = (await stat(path)).blocks * 512
    assert.ok(before >= 28 * BS)
    const result = await f.cache.evict([2, 3, 4, 10, 21 /* zero block */, 30], { punchHole: punch })
    assert.deepEqual(result.evicted, [2, 3, 4, 10, 30])
    assert.deepEqual(result.skipped, [21])
    assert.equal(result.freedBytes, 5 * BS)
    assert.deepEqual(order, ['punch 2+3 saved=absent', 'punch 10+1 saved=absent', 'punch 30+1 saved=absent'])
    for (const b of result.evicted) { assert.equal(f.cache.has(b), false); assert.equal(f.cache.isDurable(b), false) }
    const afterBytes = (await stat(path)).blocks * 512
    assert.ok(afterBytes <= before - 4 * BS, `disk space freed: ${before} -> ${afterBytes}`)
    // A reload (restart) sees them absent too.
    const saved = new Bitmap(BLOCKS, await f.presence.load(BLOCKS))
    assert.equal(saved.get(3), false)
    assert.equal(saved.get(5), true)
    // Reads fetch them again, with the right data.
    const fetchesBefore = f.fetches()
    const data = await f.cache.read(2 * BS, 3 * BS, signal)
    assert.ok(f.fetches() > fetchesBefore)
    assert.deepEqual(Buffer.from(data), f.bytes.subarray(2 * BS, 5 * BS))
    await f.cache.flush()
    assert.deepEqual(await f.cache.readBlock(30).then(b => Buffer.from(b)).catch(e => e.name), 'BlockNotPresentError')
    assert.deepEqual(Buffer.from(await f.cache.read(30 * BS, BS, signal)), f.bytes.subarray(30 * BS, 31 * BS))
    await f.cache.flush()
    assert.deepEqual((await readFile(path)).subarray(2 * BS, 5 * BS), f.bytes.subarray(2 * BS, 5 * BS), 'rewritten after the punch')
  } finally { await f.close() }
})

test('blocks waiting for their commit are skipped; reads racing an eviction never return a hole', { timeout: 20_000 }, async () => {
  const f = await setup()
  try {
    const signal = AbortSignal.timeout(10_000)
    // One signal for every concurrent reader of a round (each read listens on it while it waits): as the NBD
    // server's per-connection signal, it is raised above Node's warning threshold of 10.
    setMaxListeners(BLOCKS, signal)
    const all = Array.from({ length: BLOCKS }, (_, i) => i)
    await f.cache.ensure(all, { signal })
    await f.cache.flush()
    // Readers of every block while the blocks are evicted and read back, many times over.
    for (let round = 0; round < 5; round++) {
      const reads = all.filter(b => b < 20 || b >= 24).map(async b => Buffer.from(await f.cache.read(b * BS, BS, signal)))
      const evicting = f.cache.evict(all.filter(b => b % 2 === round % 2))
      const got = await Promise.all(reads)
      await evicting
      for (const [i, b] of all.filter(b => b < 20 || b >= 24).entries()) assert.deepEqual(got[i], f.bytes.subarray(b * BS, (b + 1) * BS), `block ${b} round ${round}`)
      await f.cache.flush()
    }
  } finally { await f.close() }
})
