// Cache quota and eviction on real daemons: an agent with a 24 MiB quota holds two 16 MiB images. While an
// instance uses each, nothing is evicted (both pinned: the agent stays over its quota). When one instance is
// destroyed, that image's least recently used blocks are evicted down to the quota (holes punched in its
// cache file, its prefetcher stopped so it does not fetch them back), and the image still in use keeps every
// block: reading it again fetches nothing. The evicted image still reads correctly (fetched again).

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { stat } from 'node:fs/promises'
import { execa } from 'execa'
import { makeTempDir, removeDir, type TestDaemon } from '../helpers/daemon.js'
import { makeImage, sha256File } from '../helpers/images.js'
import { MiB, imageStatus, startAgent, startOrigin, waitUntil } from './prefetch-helpers.js'

const IMAGE_BYTES = 16 * MiB
const QUOTA = 24 * MiB
let dir: string
const sha: Record<string, string> = {}
let origin: TestDaemon
let agent: TestDaemon

before(async () => {
  dir = await makeTempDir('vmt-pf-evict')
  const started = await startOrigin(dir, { p2p: { heartbeatMs: 300 }, prefetch: { enabled: false } })
  origin = started.origin
  for (const id of ['img1', 'img2']) {
    const path = join(dir, `${id}.raw`)
    await makeImage(path, IMAGE_BYTES, [[0, IMAGE_BYTES]])
    sha[id] = await sha256File(path)
    await origin.call('image.register', { id, path })
  }
  agent = await startAgent(dir, 'agent', started.joinArgs, { p2p: { heartbeatMs: 300 }, cache: { quotaBytes: QUOTA }, prefetch: { enabled: true } })
}, { timeout: 120_000 })

after(async () => {
  await Promise.all([origin, agent].map(async d => await d?.stop()))
  await removeDir(dir)
}, { timeout: 60_000 })

async function copy (id: string): Promise<string> {
  const out = join(agent.dir, `${id}.copy`)
  await execa('nbdcopy', ['--requests=4', agent.nbdUri(id), out], { timeout: 120_000 })
  return await sha256File(out)
}

async function allocatedBytes (id: string): Promise<number> {
  return (await stat(join(agent.dataDir, 'images', id, 'cache.raw'))).blocks * 512
}

test('eviction frees unpinned images down to the quota and never drops a block an open instance relies on', { timeout: 240_000 }, async () => {
  await agent.call('instance.create', { name: 'vm1', image: 'img1' })
  assert.equal(await copy('img1'), sha.img1)
  await agent.call('instance.create', { name: 'vm2', image: 'img2' })
  assert.equal(await copy('img2'), sha.img2)
  // Both images in use: pinned; the agent is over its quota and evicts nothing.
  for (const id of ['img1', 'img2']) {
    const s = await imageStatus(agent, id)
    assert.equal(s.heldFraction, 1)
    assert.equal(s.prefetch.evictedBlocks, 0)
  }
  const img1Before = await imageStatus(agent, 'img1')

  await agent.call('instance.destroy', { name: 'vm2' })
  const evicted = await waitUntil('img2 to be evicted down to the quota', async () => {
    const [s1, s2] = await Promise.all([imageStatus(agent, 'img1'), imageStatus(agent, 'img2')])
    assert.equal(s1.heldFraction, 1, 'img1 (in use) lost blocks')
    return s1.presentBytes + s2.presentBytes <= QUOTA && s2.prefetch.evictedBlocks > 0 ? s2 : undefined
  }, 30_000)
  assert.ok(evicted.prefetch.evictedBlocks >= (32 * MiB - QUOTA) / (64 * 1024))
  assert.equal(evicted.prefetch.mode, 'stopped', 'the evicted image\'s prefetcher is stopped')
  const allocated = await allocatedBytes('img2')
  assert.ok(allocated <= evicted.presentBytes + MiB, `holes were punched in the cache file: ${allocated} bytes allocated, ${evicted.presentBytes} present`)

  // The image in use reads whole and local: nothing fetched, no read waited.
  assert.equal(await copy('img1'), sha.img1)
  const img1After = await imageStatus(agent, 'img1')
  assert.equal(img1After.heldFraction, 1)
  assert.equal(img1After.cache.fetchedBytes, img1Before.cache.fetchedBytes)
  assert.equal(img1After.prefetch.readsFetched, img1Before.prefetch.readsFetched)
  // The evicted image did not come back by itself (no prefetch), and still reads correctly.
  assert.ok((await imageStatus(agent, 'img2')).presentBytes <= evicted.presentBytes)
  assert.equal(await copy('img2'), sha.img2)
})
