// Profile sharing between real daemons: a boot on the origin teaches an agent that already holds the image
// (the origin re-advertises when its profile changes; the agent fetches it over /vmthunder/profile/1), and a
// later boot on the agent (two boots merged) teaches the origin back.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { makeTempDir, removeDir, type TestDaemon } from '../helpers/daemon.js'
import { makeImage } from '../helpers/images.js'
import { MiB, imageStatus, replay, startAgent, startOrigin, syntheticBoot, waitUntil } from './prefetch-helpers.js'

const IMAGE_BYTES = 32 * MiB
let dir: string
let origin: TestDaemon
let agent: TestDaemon

before(async () => {
  dir = await makeTempDir('vmt-pf-share')
  const image = join(dir, 'img.raw')
  await makeImage(image, IMAGE_BYTES, [[0, IMAGE_BYTES]])
  const config = { p2p: { heartbeatMs: 300 }, prefetch: { enabled: false } }
  const started = await startOrigin(dir, config)
  origin = started.origin
  await origin.call('image.register', { id: 'img', path: image })
  agent = await startAgent(dir, 'agent', started.joinArgs, config)
}, { timeout: 120_000 })

after(async () => {
  await Promise.all([origin, agent].map(async d => await d?.stop()))
  await removeDir(dir)
}, { timeout: 60_000 })

test('the first boot anywhere teaches the other agent, and its boot teaches the first back', { timeout: 120_000 }, async () => {
  // The agent holds the image (manifest fetched) before any profile exists.
  await agent.call('instance.create', { name: 'a0', image: 'img' })
  assert.equal((await imageStatus(agent, 'img')).prefetch.profileVersion, null)

  await origin.call('instance.create', { name: 'o1', image: 'img' })
  await replay(origin, 'img', syntheticBoot(1, 120, IMAGE_BYTES))
  const learned = await waitUntil('the origin to learn a profile', async () => {
    const s = await imageStatus(origin, 'img')
    return s.prefetch.profileVersion ?? undefined
  }, 30_000)

  const shared = await waitUntil('the agent to adopt the origin\'s profile', async () => {
    const s = await imageStatus(agent, 'img')
    return s.prefetch.profileVersion === learned ? s : undefined
  }, 30_000)
  assert.equal(shared.prefetch.profileBoots, 1)
  assert.ok(shared.profilesFetched >= 1, 'fetched over the profile protocol')

  // A boot on the agent merges with the adopted profile (2 boots): the origin adopts that one.
  await agent.call('instance.create', { name: 'a1', image: 'img' })
  await replay(agent, 'img', syntheticBoot(2, 120, IMAGE_BYTES))
  const merged = await waitUntil('the agent to merge its boot', async () => {
    const s = await imageStatus(agent, 'img')
    return s.prefetch.profileBoots === 2 ? s.prefetch.profileVersion as string : undefined
  }, 30_000)
  assert.notEqual(merged, learned)
  const back = await waitUntil('the origin to adopt the merged profile', async () => {
    const s = await imageStatus(origin, 'img')
    return s.prefetch.profileVersion === merged ? s : undefined
  }, 30_000)
  assert.equal(back.prefetch.profileBoots, 2)
  // Exported profiles are equal on both agents.
  assert.deepEqual(await origin.call('image.profile.export', { id: 'img' }), await agent.call('image.profile.export', { id: 'img' }))
})
