// Prefetch yields to an on-demand read, on real daemons: an origin whose upload is limited (a slow link) and
// a cold agent whose idle prefetch keeps two 1 MiB batches in flight. A read of a block idle prefetch has not
// reached is issued while both batches are in flight; it must complete before the second of them (demand
// first at the parent, frame by frame), i.e. at most one prefetch batch completes while it waits. In FIFO
// order both would. Order of completion, not timing.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { makeTempDir, removeDir, type TestDaemon } from '../helpers/daemon.js'
import { makeImage, readRange } from '../helpers/images.js'
import { nbdConnect } from '../../scripts/lib/nbd-replay.js'
import { MiB, imageStatus, startAgent, startOrigin, waitUntil } from './prefetch-helpers.js'

const IMAGE_BYTES = 32 * MiB
const BATCH_BLOCKS = 16
let dir: string
let image: string
let origin: TestDaemon
let agent: TestDaemon

before(async () => {
  dir = await makeTempDir('vmt-pf-yield')
  image = join(dir, 'img.raw')
  await makeImage(image, IMAGE_BYTES, [[0, IMAGE_BYTES]])
  const started = await startOrigin(dir, { p2p: { heartbeatMs: 300, uploadLimitBytesPerSec: 2 * MiB }, prefetch: { enabled: false } })
  origin = started.origin
  await origin.call('image.register', { id: 'img', path: image })
  agent = await startAgent(dir, 'agent', started.joinArgs, { p2p: { heartbeatMs: 300 }, prefetch: { enabled: true } })
}, { timeout: 120_000 })

after(async () => {
  await Promise.all([origin, agent].map(async d => await d?.stop()))
  await removeDir(dir)
}, { timeout: 60_000 })

// The peer layer's block server picks its next frame before it waits for upload tokens, so a prefetch frame
// chosen while the previous one drains still goes before a demand request that arrives during that wait. With
// the pump waiting for tokens first (block-server.ts, see the prefetch report) this passes.

test('an on-demand read is served before the prefetch batches queued ahead of it', { timeout: 120_000 }, async () => {
  await agent.call('instance.create', { name: 'vm', image: 'img' })
  const busy = await waitUntil('idle prefetch with two batches in flight', async () => {
    const s = await imageStatus(agent, 'img')
    return s.prefetch.mode === 'idle' && s.prefetch.inFlightBatches === 2 && s.heldFraction < 0.5 ? s : undefined
  }, 60_000, 10)
  const before = busy.prefetch.blocksFetched
  // The last block: idle prefetch (no profile) goes in ascending order, so it is neither present nor in flight.
  const offset = IMAGE_BYTES - 64 * 1024
  const conn = await nbdConnect({ socketPath: agent.nbdSocket, exportName: 'img' })
  const data = await conn.read(offset, 64 * 1024)
  const after = (await imageStatus(agent, 'img')).prefetch
  await conn.close()
  assert.deepEqual(data, await readRange(image, offset, 64 * 1024))
  const batchesDuring = (after.blocksFetched - before) / BATCH_BLOCKS
  assert.ok(batchesDuring <= 1, `${batchesDuring} prefetch batches completed while the on-demand read waited (FIFO would be 2)`)
  assert.equal(after.readsFetched, 1)

  // Prefetch resumes after the read and completes the image: the agent is a seed.
  const done = await waitUntil('prefetch to complete the image', async () => {
    const s = await imageStatus(agent, 'img')
    return s.heldFraction === 1 ? s : undefined
  }, 90_000)
  assert.equal(done.seed, true)
  assert.equal(done.depth, 0)
})
