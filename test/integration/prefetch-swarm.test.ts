// One boot wave on real daemons (origin, a leader and a follower on loopback, no profile anywhere at first):
// - the leader advertises that it boots the image, and serves the first-touch order of its boot so far (a live
//   profile); the follower, booting the same image, fetches it and reads ahead in that order before its own VM
//   has read anything;
// - an agent's idle prefetch of the image waits while a peer boots it, and resumes when the boot is over.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { removeDir, type TestDaemon } from '../helpers/daemon.js'
import { MiB, imageStatus, replay, startAgent, startOrigin, syntheticBoot, tempImage, waitUntil } from './prefetch-helpers.js'

const IMAGE_BYTES = 32 * MiB
const BOOT = syntheticBoot(7, 150, IMAGE_BYTES)
let dir: string
let origin: TestDaemon
let leader: TestDaemon
let follower: TestDaemon

before(async () => {
  const made = await tempImage('vmt-pf-swarm', IMAGE_BYTES)
  dir = made.dir
  const image = made.image
  // The origin's upload is limited so that a whole-image pull takes seconds (there is time to see it wait).
  const started = await startOrigin(dir, { p2p: { heartbeatMs: 300, uploadLimitBytesPerSec: 4 * MiB }, prefetch: { enabled: false } })
  origin = started.origin
  await origin.call('image.register', { id: 'img', path: image })
  // The leader's recording lasts until its instance is destroyed: it boots as long as the test says.
  leader = await startAgent(dir, 'leader', started.joinArgs, { p2p: { heartbeatMs: 300 }, prefetch: { enabled: true, recordingQuietMs: 600_000 } })
  follower = await startAgent(dir, 'follower', started.joinArgs, { p2p: { heartbeatMs: 300 }, prefetch: { enabled: true } })
}, { timeout: 120_000 })

after(async () => {
  await Promise.all([origin, leader, follower].map(async d => await d?.stop()))
  await removeDir(dir)
}, { timeout: 60_000 })

test('a follower in the wave reads ahead in the order the leader is reading, learned live', { timeout: 120_000 }, async (t) => {
  await leader.call('instance.create', { name: 'l0', image: 'img' })
  await replay(leader, 'img', BOOT)
  const lead = await imageStatus(leader, 'img')
  assert.equal(lead.prefetch.booting, 1, 'the leader is still booting (its recording goes on)')
  assert.equal(lead.prefetch.profileBoots, 0, 'no profile learned anywhere yet')

  await follower.call('instance.create', { name: 'f0', image: 'img' })
  const following = await waitUntil('the follower to follow the leader\'s live profile', async () => {
    const s = await imageStatus(follower, 'img')
    return s.prefetch.liveProfileEntries > 0 && s.prefetch.bytesFetched > 0 ? s : undefined
  }, 30_000)
  assert.equal(following.prefetch.profileBoots, 0, 'a live profile is not a learned one')
  assert.ok(following.prefetch.peersBooting >= 1)
  assert.equal(following.prefetch.readsLocal + following.prefetch.readsFetched, 0, 'fetched ahead before its VM read anything')

  await replay(follower, 'img', BOOT)
  const after = await imageStatus(follower, 'img')
  const localShare = after.prefetch.readsLocal / (after.prefetch.readsLocal + after.prefetch.readsFetched)
  t.diagnostic(`follower reads local: ${after.prefetch.readsLocal} of ${after.prefetch.readsLocal + after.prefetch.readsFetched}`)
  // Random offsets: without the leader's order nothing predicts these reads (sequential read-ahead guesses little).
  assert.ok(localShare >= 0.5, `follower's reads local: ${localShare}`)
  // The leader first: had the follower learned its boot first, the leader could adopt that profile before its
  // own destroy and then count two boots (it did once, on a loaded host).
  await leader.call('instance.destroy', { name: 'l0' })
  await waitUntil('the leader to learn its boot and stop booting', async (note) => {
    const s = await imageStatus(leader, 'img')
    note({ prefetch: s.prefetch, instances: (await leader.call('instance.list')) })
    return s.prefetch.profileBoots === 1 && s.prefetch.booting === 0 ? s : undefined
  }, 30_000)
  await follower.call('instance.destroy', { name: 'f0' })
})

test('idle prefetch of an image waits while a peer boots it, and resumes after', { timeout: 180_000 }, async () => {
  const running = await waitUntil('the follower\'s idle prefetch to run', async (note) => {
    const s = await imageStatus(follower, 'img')
    note({ heldFraction: s.heldFraction, prefetch: s.prefetch })
    return s.prefetch.mode === 'idle' && s.prefetch.peersBooting === 0 && s.heldFraction < 1 ? s : undefined
  }, 60_000)
  assert.ok(running.prefetch.booting === 0)

  await leader.call('instance.create', { name: 'l1', image: 'img' })
  const held = await waitUntil('the follower to hold idle prefetch back', async () => {
    const s = await imageStatus(follower, 'img')
    return s.prefetch.peersBooting >= 1 && s.prefetch.inFlightBatches === 0 ? s : undefined
  }, 30_000)
  assert.ok(held.heldFraction < 1)
  // The leader boots (its reads take link time); the follower's idle prefetch would run meanwhile if not held.
  await replay(leader, 'img', syntheticBoot(8, 150, IMAGE_BYTES))
  const during = await imageStatus(follower, 'img')
  assert.equal(during.prefetch.bytesFetched, held.prefetch.bytesFetched, 'no idle batch while the peer boots')
  assert.equal(during.prefetch.inFlightBatches, 0)
  assert.ok(during.prefetch.peersBooting >= 1)

  await leader.call('instance.destroy', { name: 'l1' })
  const done = await waitUntil('the follower to complete the image once no peer boots it', async () => {
    const s = await imageStatus(follower, 'img')
    return s.heldFraction === 1 ? s : undefined
  }, 120_000)
  assert.equal(done.prefetch.mode, 'done')
  assert.equal(done.prefetch.peersBooting, 0)
})
