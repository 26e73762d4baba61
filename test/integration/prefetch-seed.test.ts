// Complete agents become seeds, on real daemons: an origin that takes one child per image, two agents that
// only read on demand (no prefetch) and one agent that idle-prefetches the whole image. Once it holds every
// block it advertises depth 0 (a seed), and the other agents take it as a parent at depth 1 (or are seeds
// themselves: a relay caches the blocks it relays to the prefetcher), and a reader that joins later attaches
// under one of the new seeds.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { makeTempDir, removeDir, type TestDaemon } from '../helpers/daemon.js'
import { makeImage } from '../helpers/images.js'
import { MiB, imageStatus, startAgent, startOrigin, waitUntil } from './prefetch-helpers.js'

const IMAGE_BYTES = 16 * MiB
let dir: string
let origin: TestDaemon
let readers: TestDaemon[] = []
let prefetcher: TestDaemon
let joinArgs: string[]

before(async () => {
  dir = await makeTempDir('vmt-pf-seed')
  const image = join(dir, 'img.raw')
  await makeImage(image, IMAGE_BYTES, [[0, IMAGE_BYTES]])
  // The origin's upload is limited so that the prefetching agent completes the image after the others attached.
  const started = await startOrigin(dir, { p2p: { heartbeatMs: 300, originChildLimit: 1, uploadLimitBytesPerSec: 4 * MiB }, prefetch: { enabled: false } })
  origin = started.origin
  joinArgs = started.joinArgs
  await origin.call('image.register', { id: 'img', path: image })
  const quiet = { p2p: { heartbeatMs: 300 }, prefetch: { enabled: false } }
  readers = await Promise.all(['r1', 'r2'].map(async name => await startAgent(dir, name, started.joinArgs, quiet)))
  prefetcher = await startAgent(dir, 'pf', started.joinArgs, { p2p: { heartbeatMs: 300 }, prefetch: { enabled: true } })
}, { timeout: 120_000 })

after(async () => {
  await Promise.all([origin, ...readers, prefetcher].map(async d => await d?.stop()))
  await removeDir(dir)
}, { timeout: 60_000 })

test('an agent that completes the image advertises itself as a seed and the others move to it', { timeout: 180_000 }, async () => {
  for (const [i, r] of readers.entries()) await r.call('instance.create', { name: `r${i}`, image: 'img' })
  // The readers attach (one to the origin, the other to it) before the prefetcher joins the tree.
  await waitUntil('the readers to attach', async () => {
    const s = await Promise.all(readers.map(async r => await imageStatus(r, 'img')))
    return s.every(x => x.parents.length > 0 && x.depth !== null) ? s : undefined
  }, 60_000)
  await prefetcher.call('instance.create', { name: 'p', image: 'img' })
  const pfId = (await prefetcher.call('node.status')).peerId
  const partial = await imageStatus(prefetcher, 'img')
  assert.ok(partial.heldFraction < 1 && partial.seed === false)

  const seed = await waitUntil('the prefetching agent to hold every block', async () => {
    const s = await imageStatus(prefetcher, 'img')
    return s.heldFraction === 1 ? s : undefined
  }, 120_000)
  assert.equal(seed.seed, true)
  assert.equal(seed.depth, 0, 'a complete agent is at depth 0')
  assert.equal(seed.prefetch.mode, 'done')
  assert.equal(seed.prefetch.blocksRemaining, 0)

  // It drops its parents (a seed needs none) at its next heartbeat.
  await waitUntil('the seed to drop its parents', async () => {
    const s = await imageStatus(prefetcher, 'img')
    return s.parents.length === 0 && s.depth === 0 ? s : undefined
  }, 30_000)
  // Every reader either became a seed too (a relay on the prefetcher's path caches what it relays: with the
  // origin's one child slot the readers often relay the whole image) or takes the new seed as a parent and
  // sits at depth 1.
  let last: any[] = []
  const finalReaders = await waitUntil('the readers to move to the seed or become seeds', async () => {
    const s = await Promise.all(readers.map(async r => await imageStatus(r, 'img')))
    last = s
    return s.every(x => (x.parents.includes(pfId) && x.depth === 1) || (x.seed === true && x.depth === 0 && x.parents.length === 0)) ? s : undefined
  }, 60_000).catch(err => {
    throw new Error(`${(err as Error).message}: ${JSON.stringify({ seed: pfId, readers: last.map(x => ({ parents: x.parents, depth: x.depth, seed: x.seed })) })}`)
  })
  // A reader that joins now attaches under the new seeds at depth 1, not under the origin's one child slot.
  const origins = new Set([(await origin.call('node.status')).peerId])
  const seeds = new Set([pfId, ...(await Promise.all(readers.map(async (r, i) => finalReaders[i].seed === true ? (await r.call('node.status')).peerId : undefined))).filter((x): x is string => x !== undefined)])
  const late = await startAgent(dir, 'late', joinArgs, { p2p: { heartbeatMs: 300 }, prefetch: { enabled: false } })
  readers.push(late) // stopped in after()
  await late.call('instance.create', { name: 'late', image: 'img' })
  await waitUntil('a late reader to attach under a new seed', async () => {
    const s = await imageStatus(late, 'img')
    return s.depth === 1 && s.parents.some((p: string) => seeds.has(p) && !origins.has(p)) ? s : undefined
  }, 60_000)
})
